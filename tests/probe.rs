//! `vecrig-server --probe`, the container health check, run as the real binary against a
//! server on a free port: exit 0 while it serves, 1 with a reason once it is gone.

use std::process::Command;

use crate::common::TestServer;
use crate::common::process::server_binary;

fn probe(addr: std::net::SocketAddr) -> std::process::Output {
    Command::new(server_binary())
        .args(["--probe", "--probe-timeout", "2s", "--listen"])
        .arg(addr.to_string())
        // The probe must not need the server's data directory or any other setting.
        .env_remove("VECRIG_DATA_DIR")
        .output()
        .expect("run vecrig-server --probe")
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_exits_0_while_serving_and_1_when_gone() {
    let (config, temp) = TestServer::config(8);
    let server = TestServer::start_in(config, temp).await;
    let addr = server.addr;

    let serving = tokio::task::spawn_blocking(move || probe(addr))
        .await
        .expect("probe task");
    assert!(
        serving.status.success(),
        "probe of a serving server failed: {}",
        String::from_utf8_lossy(&serving.stderr)
    );

    server.stop().await.expect("server stops");
    let gone = tokio::task::spawn_blocking(move || probe(addr))
        .await
        .expect("probe task");
    assert_eq!(gone.status.code(), Some(1), "a stopped server is unhealthy");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
}
