//! `vecrig`: the public gRPC API of the vecrig vector index, and what every other part shares.
//!
//! - [`proto`]: the generated messages, client and server stubs for `vecrig.v1`, and the encoded
//!   descriptor set that the server hands to gRPC reflection.
//! - [`embed`]: the text embedder, shared so that the loadgen's vector queries and the server's
//!   embedded texts live in one space.
//! - [`dataset`]: datasets read from files (TEXMEX, NumPy, VectorDBBench parquet, ann-benchmarks
//!   HDF5): the points to ingest, the queries to send and their ground truth.
//! - [`client`]: connecting to a target (a pool of HTTP/2 connections, deadlines, message limits).
//! - [`synthetic`]: the seeded data distribution that the server preloads and the loadgen queries,
//!   so both sides agree on what "realistic" vectors and texts look like.
//! - [`validation`]: the stress-harness API that the integration tests drive.

pub mod client;
pub mod dataset;
pub mod embed;
pub mod synthetic;
pub mod validation;

/// Generated code for the `vecrig.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("vecrig.v1");

    /// The encoded `FileDescriptorSet` of `proto/`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/vecrig_descriptor.bin"));

    /// The fully qualified gRPC service name, as health checks and reflection report it.
    pub const SERVICE_NAME: &str = "vecrig.v1.VectorIndex";
}
