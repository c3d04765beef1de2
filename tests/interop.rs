//! A client written in another language from the proto alone (Python, stubs generated at test
//! time from `proto/`) uses every RPC, health and reflection against a real server.
//!
//! Needs Python with `grpcio grpcio-tools grpcio-health-checking grpcio-reflection`, which
//! `scripts/test` installs in the project's own virtual environment; without them the test
//! says SKIPPED and checks nothing else, except under `CI=true`, where it fails: CI must not
//! pass by skipping.

use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_from_the_proto_alone() {
    if !crate::common::python_or_skip(
        "python_client_from_the_proto_alone",
        "grpc, grpc_tools, grpc_health.v1, grpc_reflection.v1alpha",
        "python with grpcio, grpcio-tools, grpcio-health-checking and grpcio-reflection is \
         needed (`scripts/test` installs them in target/pyenv)",
    ) {
        return;
    }
    let (config, temp) = TestServer::config(8);
    let server = TestServer::start_in(config, temp).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let output = tokio::process::Command::new(crate::common::python())
        .arg(format!("{root}/tests/interop/python_client.py"))
        .arg(format!("{root}/proto"))
        .arg(server.addr.to_string())
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("interop:"), "{stdout}");
    server.stop().await.expect("clean stop");
}
