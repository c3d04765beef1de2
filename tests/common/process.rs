//! The real binaries as processes: where they are, and a `vecrig-server` started on
//! 127.0.0.1:0 whose address is read from the `listening on` line it prints (never a port
//! picked beforehand, which another process may take in between).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use vecrig::client::ConnectOptions;
use vecrig::validation::StressTester;

/// The real `vecrig-server` binary, in the directory of the profile the tests were built in
/// (`scripts/test` builds it there before the tests).
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join("vecrig-server"))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is missing: run the tests with README's test command (`scripts/test`), which builds it",
        path.display()
    );
    path
}

/// The real `vecrig-loadgen` binary, beside the server's.
pub fn loadgen_binary() -> PathBuf {
    server_binary().with_file_name("vecrig-loadgen")
}

/// `vecrig-server --listen 127.0.0.1:0 --log warn`, its stdout piped for the address, killed
/// on drop. The caller adds its flags; [`spawn`] starts it.
pub fn server_command() -> Command {
    let mut command = Command::new(server_binary());
    command.args(["--listen", "127.0.0.1:0", "--log", "warn"]);
    command
}

/// Starts `command` (a `vecrig-server`, possibly behind a wrapper such as `taskset` that execs
/// it) and returns the child and the address from its `listening on` line. The rest of its
/// stdout is drained in the background so the server never blocks on a full pipe.
pub async fn spawn(command: Command) -> (Child, SocketAddr) {
    let (child, addr, _) = spawn_reading(command, false).await;
    (child, addr)
}

/// Like [`spawn`], for a server started with `--metrics-listen`: also the metrics endpoint's
/// address, from the `metrics on` line that follows.
pub async fn spawn_with_metrics(command: Command) -> (Child, SocketAddr, SocketAddr) {
    let (child, addr, metrics) = spawn_reading(command, true).await;
    (child, addr, metrics.expect("metrics address"))
}

async fn spawn_reading(
    mut command: Command,
    metrics: bool,
) -> (Child, SocketAddr, Option<SocketAddr>) {
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn vecrig-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut address_after = async |prefix: &str| -> SocketAddr {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("server prints its address")
            .expect("read")
            .expect("a line");
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected '{prefix}ADDR', got {line:?}"))
            .parse()
            .expect("address")
    };
    let addr = address_after("listening on ").await;
    let metrics = match metrics {
        true => Some(address_after("metrics on ").await),
        false => None,
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, metrics)
}

/// Waits until the server at `target` answers health with SERVING, polling every `every`;
/// fails the test after `limit`.
pub async fn wait_serving(target: &str, limit: Duration, every: Duration) {
    let started = Instant::now();
    loop {
        if let Ok(tester) = StressTester::connect(target, &ConnectOptions::default()).await
            && matches!(tester.health().await, Ok(ServingStatus::Serving))
        {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "server never became SERVING within {limit:?}"
        );
        tokio::time::sleep(every).await;
    }
}
