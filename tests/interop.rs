//! A client written in another language from the proto alone (Python, stubs generated at test
//! time from `proto/`) uses every RPC, health and reflection against a real server.
//!
//! Needs python3 with `grpcio grpcio-tools grpcio-health-checking grpcio-reflection` (CI installs
//! them); without them the test says SKIPPED and checks nothing else, except under `CI=true`,
//! where it fails: CI must not pass by skipping.

mod common;

use std::process::Command;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_from_the_proto_alone() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_tools, grpc_health.v1, grpc_reflection.v1alpha",
        ])
        .output();
    if !matches!(probe, Ok(ref o) if o.status.success()) {
        let why = "python3 with grpcio, grpcio-tools, grpcio-health-checking and \
                   grpcio-reflection is needed (pip install them to run this test)";
        // CI installs them: there a missing package is a failure, never a quiet pass.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "interop: {why}; under CI=true this is a failure, not a skip"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (config, temp) = TestServer::config(8);
    let server = TestServer::start_in(config, temp).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let output = tokio::process::Command::new("python3")
        .arg(format!("{root}/tests/interop/python_client.py"))
        .arg(format!("{root}/proto"))
        .arg(server.addr.to_string())
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("interop:"), "{stdout}");
    server.stop().await.expect("clean stop");
}
