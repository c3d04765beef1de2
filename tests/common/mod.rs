//! Boots a real vecrig server on 127.0.0.1:0 with a temporary data directory, in-process.

#![allow(dead_code)]

pub mod flood;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    pub data_dir: PathBuf,
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
        let data_dir = config.data_dir.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(vecrig_server::serve(listener, config, async {
            let _ = stopped.await;
        }));
        let server = Self {
            addr,
            data_dir,
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

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
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
/// `dimensions`, built once per test binary (by a real server: preload, then a graceful stop,
/// which saves) and copied for each test, so tests do not each spend seconds building the
/// same HNSW graph.
pub async fn preloaded_fixture(dimensions: usize, points: u64) -> PathBuf {
    static FIXTURE: tokio::sync::OnceCell<(TempDir, usize, u64)> =
        tokio::sync::OnceCell::const_new();
    let (dir, dims, count) = FIXTURE
        .get_or_init(|| async {
            let temp = tempfile::tempdir().expect("tempdir");
            let mut config = Config::new(temp.path(), dimensions);
            config.preload = points;
            let server = TestServer::start(config).await;
            server.stop().await.expect("fixture server stops cleanly");
            (temp, dimensions, points)
        })
        .await;
    assert_eq!(
        (*dims, *count),
        (dimensions, points),
        "one fixture per test binary"
    );
    dir.path().to_path_buf()
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

/// The real `vecrig-server` binary, next to the test binaries' directory
/// (target/<profile>/deps/x -> target/<profile>/vecrig-server).
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("vecrig-server"))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --release --workspace`), as README's test command does",
        path.display()
    );
    path
}
