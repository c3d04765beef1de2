//! The built-in template sets for databases that cannot run here, checked against the
//! descriptors their official Python clients ship (taken at test time from the installed
//! package, written as a descriptor set by `tests/targets/protoset.py`): every method, field,
//! enum name, answer check and setup call of the set must fit the client's API, as
//! `vecrig-loadgen run FILE --check` checks it, without a server.
//!
//! Needs Python with `qdrant-client` and `pymilvus`, and `weaviate-client` (whose pins clash
//! with grpcio-tools': `scripts/test` installs it in a virtual environment of its own,
//! `target/venv-weaviate`, which the Weaviate test prefers). Without them the tests print
//! SKIPPED, except under `CI=true`, where they fail.

use std::path::Path;

use vecrig_loadgen::plan::file::Planned;
use vecrig_loadgen::plan::suite::Profile;
use vecrig_loadgen::{Plan, RunOptions};

/// Writes the descriptor set of `modules` to `out`, or says why the test cannot run.
fn protoset_or_skip(test: &str, out: &Path, modules: &[&str]) -> bool {
    protoset_with(
        &crate::common::python().to_string_lossy(),
        test,
        out,
        modules,
    )
}

/// [`protoset_or_skip`] with the interpreter `python`.
fn protoset_with(python: &str, test: &str, out: &Path, modules: &[&str]) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/protoset.py");
    let written = std::process::Command::new(python)
        .arg(script)
        .arg(out)
        .args(modules)
        .output();
    match written {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            crate::common::skip(test, &format!("the client's descriptors are needed: {why}"));
            false
        }
    }
}

/// `run --check` of a file naming the built-in set `builtin` over the descriptor set at
/// `protoset`: its summary, or the error.
async fn check(builtin: &str, protoset: &Path) -> Result<String, String> {
    let file = format!(
        r#"[target]
builtin = "{builtin}"
protoset = "{}"
dimensions = 16
metric = "l2"

[[scenario]]
name = "check"
model = "closed"
start = 2
stages = "1s:2"
ingest = {{ points = 100, batch = 10 }}
"#,
        protoset.display()
    );
    let planned = Planned::parse(&file, Profile::Quick).map_err(|e| e.to_string())?;
    // Nothing is sent: the descriptors come from the file.
    let options = RunOptions::new("http://127.0.0.1:9");
    vecrig_loadgen::check_file(&options, &planned, &Plan::new(Vec::new()))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_qdrant_set_fits_the_api_of_the_official_qdrant_client() {
    let test = "the_qdrant_set_fits_the_api_of_the_official_qdrant_client";
    let dir = tempfile::tempdir().expect("temp dir");
    let protoset = dir.path().join("qdrant.protoset");
    let modules = [
        "qdrant_client.grpc.points_service_pb2",
        "qdrant_client.grpc.collections_service_pb2",
    ];
    if !protoset_or_skip(test, &protoset, &modules) {
        return;
    }
    let summary = check("qdrant", &protoset).await.expect("the set fits");
    for method in [
        "qdrant.Collections.Delete",
        "qdrant.Collections.Create (answer checked)",
        "qdrant.Points.Search",
        "qdrant.Points.Upsert (answer checked)",
    ] {
        assert!(summary.contains(method), "{method} in:\n{summary}");
    }
}

#[tokio::test]
async fn the_milvus_set_fits_the_api_of_the_official_milvus_client() {
    let test = "the_milvus_set_fits_the_api_of_the_official_milvus_client";
    let dir = tempfile::tempdir().expect("temp dir");
    let protoset = dir.path().join("milvus.protoset");
    if !protoset_or_skip(test, &protoset, &["pymilvus.grpc_gen.milvus_pb2"]) {
        return;
    }
    let summary = check("milvus", &protoset).await.expect("the set fits");
    for method in [
        "CreateCollection",
        "CreateIndex",
        "LoadCollection",
        "Search",
        "Insert",
    ] {
        assert!(summary.contains(method), "{method} in:\n{summary}");
    }
    // A descriptor set without the service is refused naming it, before any load.
    let empty = dir.path().join("other.protoset");
    assert!(protoset_or_skip(
        test,
        &empty,
        &["google.protobuf.descriptor_pb2"]
    ));
    let e = check("milvus", &empty)
        .await
        .expect_err("no Milvus service");
    assert!(e.contains("milvus.proto.milvus.MilvusService"), "{e}");
}

#[tokio::test]
async fn the_weaviate_set_fits_the_api_of_the_official_weaviate_client() {
    let test = "the_weaviate_set_fits_the_api_of_the_official_weaviate_client";
    let dir = tempfile::tempdir().expect("temp dir");
    let protoset = dir.path().join("weaviate.protoset");
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv-weaviate/bin/python3");
    let python = if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".to_string()
    };
    // The client ships the API of several server versions: the newest.
    let modules = ["weaviate.proto.v1.*.v1.weaviate_pb2"];
    if !protoset_with(&python, test, &protoset, &modules) {
        return;
    }
    let summary = check("weaviate", &protoset).await.expect("the set fits");
    for method in [
        "weaviate.v1.Weaviate.Search",
        "weaviate.v1.Weaviate.BatchObjects (answer checked)",
    ] {
        assert!(summary.contains(method), "{method} in:\n{summary}");
    }
}
