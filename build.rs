//! Compiles the public gRPC contract in `proto/` into Rust client and server stubs.
//!
//! `protox` parses the `.proto` files in pure Rust, so a fresh machine needs no `protoc`.
//! The encoded descriptor set is written next to the generated code so the server can
//! serve gRPC reflection from exactly the contract it was built from.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &["vecrig/v1/vector_index.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile(PROTOS, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("vecrig_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
