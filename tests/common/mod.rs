//! What the integration tests share: a real vecrig server booted in-process on 127.0.0.1:0
//! with a temporary data directory ([`TestServer`]), the real binaries as processes
//! ([`process`]), the metrics endpoint's text ([`metrics`]), the Python the tests run, and
//! the one way a test says it skipped ([`skip`]).

pub mod flood;
pub mod metrics;
pub mod process;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vecrig::client::{self, ConnectOptions};
use vecrig::proto::vector_index_client::VectorIndexClient;
use vecrig_server::config::Config;

/// A server running in this process, stopped (gracefully) by [`TestServer::stop`] or on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The metrics endpoint's address, when the config asked for one.
    pub metrics: Option<SocketAddr>,
    _temp: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), vecrig_server::ServeError>>>,
}

impl TestServer {
    /// A config for `dimensions`-wide vectors in a fresh temporary directory.
    pub fn config(dimensions: usize) -> (Config, TempDir) {
        let temp = tempfile::tempdir().expect("tempdir");
        (Config::new(temp.path(), dimensions), temp)
    }

    /// Starts a server with `config` and waits until health says SERVING.
    pub async fn start(config: Config) -> Self {
        Self::start_inner(config, None).await
    }

    /// Like [`TestServer::start`], keeping `temp` alive as long as the server.
    pub async fn start_in(config: Config, temp: TempDir) -> Self {
        Self::start_inner(config, Some(temp)).await
    }

    async fn start_inner(mut config: Config, temp: Option<TempDir>) -> Self {
        // Pacing's CPU ceiling prices answers at the process's CPU outside index work; here
        // the loadgen shares the process, and its CPU would be priced as the server's request
        // path (a 3x open-model overload was then paced, shed p99 1.9-6 s). The ceiling is
        // tested where the server has a process to itself: `tests/collapse.rs`.
        config.pacing.excess_cpu = 0.0;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Bound here, so the test knows the port the server serves metrics on.
        let metrics_listener = match config.metrics_listen {
            Some(metrics) => Some(
                tokio::net::TcpListener::bind(metrics)
                    .await
                    .expect("bind metrics"),
            ),
            None => None,
        };
        let metrics = metrics_listener
            .as_ref()
            .map(|listener| listener.local_addr().expect("metrics addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(vecrig_server::serve_on(
            listener,
            metrics_listener,
            config,
            async {
                let _ = stopped.await;
            },
        ));
        let server = Self {
            addr,
            metrics,
            _temp: temp,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_serving(Duration::from_secs(120)).await;
        server
    }

    pub fn target(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> VectorIndexClient<Channel> {
        client::connect(&self.target(), &ConnectOptions::default())
            .await
            .expect("connect")
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        let channel = client::endpoint(&self.target(), &ConnectOptions::default())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
    }

    pub async fn health_status(&self) -> ServingStatus {
        let response = self
            .health()
            .await
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check");
        response.into_inner().status()
    }

    async fn wait_serving(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(channel) = client::endpoint(&self.target(), &ConnectOptions::default())
                .expect("endpoint")
                .connect()
                .await
            {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().status());
                if matches!(status, Ok(ServingStatus::Serving)) {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "server did not become SERVING within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server gracefully (drain, save) and returns its result.
    pub async fn stop(mut self) -> Result<(), vecrig_server::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        task.await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Copies every regular file of `from` into `to` (a snapshot directory is flat).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A data directory holding a snapshot of `points` preloaded synthetic points of
/// `dimensions`, built once per shape for the whole test binary (by a real server: preload,
/// then a graceful stop, which saves) and copied for each test, so tests do not each spend
/// seconds building the same HNSW graph.
pub async fn preloaded_fixture(dimensions: usize, points: u64) -> PathBuf {
    type Cell = Arc<tokio::sync::OnceCell<TempDir>>;
    static FIXTURES: Mutex<BTreeMap<(usize, u64), Cell>> = Mutex::new(BTreeMap::new());
    let cell = Arc::clone(
        FIXTURES
            .lock()
            .expect("fixtures")
            .entry((dimensions, points))
            .or_default(),
    );
    cell.get_or_init(|| async {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(temp.path(), dimensions);
        config.preload = points;
        let server = TestServer::start(config).await;
        server.stop().await.expect("fixture server stops cleanly");
        temp
    })
    .await
    .path()
    .to_path_buf()
}

/// Starts a server on a private copy of the preloaded fixture.
pub async fn start_preloaded(
    dimensions: usize,
    points: u64,
    tune: impl FnOnce(&mut Config),
) -> TestServer {
    let fixture = preloaded_fixture(dimensions, points).await;
    let temp = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture, temp.path());
    let mut config = Config::new(temp.path(), dimensions);
    tune(&mut config);
    TestServer::start_in(config, temp).await
}

/// The target directory the test binary was built in (target/<profile>/deps/x -> target).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// The Python the tests run: the project's own virtual environment (`target/pyenv`, which
/// `scripts/test` makes and fills) where it exists, else `python3` from PATH.
pub fn python() -> PathBuf {
    let venv = target_dir().join("pyenv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Whether [`python`] can import `modules` (a comma-separated import list); if not, the test
/// is skipped with `why` (see [`skip`]).
pub fn python_or_skip(test: &str, modules: &str, why: &str) -> bool {
    let probe = std::process::Command::new(python())
        .args(["-c", &format!("import {modules}")])
        .output();
    if matches!(probe, Ok(ref o) if o.status.success()) {
        return true;
    }
    skip(test, why);
    false
}

/// Says that `test` did not run and why. Under `CI=true` that is a failure: CI must not pass
/// on a test that did not run.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "SKIPPED {test}: {why}; under CI=true this is a failure, not a skip"
    );
    report_skip(test, why);
}

/// Says that `test` did not run and why, where the machine rather than the setup lacks what
/// it needs (a Docker engine, the right to mount), so CI passes too. The line goes straight to
/// stderr, past the harness's capture of a passing test's output, and into
/// `target/test-skips.txt`, which `scripts/test` prints after the summary.
pub fn report_skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    let _ = writeln!(std::io::stderr(), "{line}");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target_dir().join("test-skips.txt"))
        .and_then(|mut file| writeln!(file, "{line}"));
}

/// A Python fixture server (a script that prints `listening on HOST:PORT` once it serves, and
/// serves until its stdin closes), run with [`python()`]; killed when dropped.
pub struct PythonServer {
    child: tokio::process::Child,
    /// `HOST:PORT`, from its first line.
    pub address: String,
}

impl PythonServer {
    /// Runs `script` with `args` and waits (at most a minute) for its address.
    pub async fn start(script: &std::path::Path, args: &[&std::ffi::OsStr]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start python");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} prints its address within 60 s", script.display()))
            .expect("read")
            .unwrap_or_else(|| panic!("{} exited before serving", script.display()));
        let address = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, address }
    }

    /// Closes its stdin and waits for it to end (killing it after ten seconds).
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
