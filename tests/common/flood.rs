//! Raw HTTP/2 floods and the one-CPU server they are aimed at: the tools of the collapse and
//! fairness tests.
//!
//! A flood is closed-loop, like any impatient client: `connections x streams` requests are
//! outstanding at all times, and each answer (served or refused) is followed at once by the
//! next request on the same stream. It runs on its own OS thread, pinned to a CPU of its own
//! where the machine allows, with a current-thread runtime, so that the client's cost is not
//! taken from the server's CPU.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost::Message;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tonic::codegen::Bytes;
use tonic::codegen::http;

use super::{metrics, process};

/// What to send, how hard, and for how long.
#[derive(Clone)]
pub struct Flood {
    /// Server address.
    pub addr: SocketAddr,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Requests outstanding on each connection at all times.
    pub streams: usize,
    /// gRPC method path, such as `/vecrig.v1.VectorIndex/Search`.
    pub path: &'static str,
    /// The request: one gRPC message frame.
    pub body: Bytes,
    /// Extra request headers (metadata).
    pub headers: Vec<(&'static str, String)>,
    /// How long it runs.
    pub duration: Duration,
    /// A local address to connect from (such as 127.0.0.2), to be another client.
    pub bind: Option<std::net::IpAddr>,
    /// Each stream's think time: with `Some(interval)` a stream sends its next request
    /// `interval` after it sent the last one (or at once, if the answer took longer), the way
    /// a polite client does; with `None` it sends again as soon as it has the answer.
    pub send_every: Option<Duration>,
}

/// What a flood got back.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answers by grpc-status (transport failures under -1).
    pub codes: BTreeMap<i32, u64>,
    /// Time from sending to the status, of OK answers, in microseconds.
    pub ok_latency_us: Option<Histogram<u64>>,
    /// The window in which answers were counted (the flood's duration).
    pub elapsed: Duration,
}

impl Outcome {
    /// One line for the test's output: goodput, answers, OK latency and codes.
    pub fn describe(&self, label: &str) -> String {
        format!(
            "{label}: {:.0} OK/s of {:.0} answers/s, OK p50 {:.2} ms p99 {:.2} ms, codes {:?}",
            self.goodput(),
            self.answers_per_sec(),
            self.ok_ms(0.5),
            self.ok_ms(0.99),
            self.codes
        )
    }

    /// OK answers.
    pub fn ok(&self) -> u64 {
        self.codes.get(&0).copied().unwrap_or(0)
    }

    /// OK answers per second.
    pub fn goodput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }

    /// All answers per second.
    pub fn answers_per_sec(&self) -> f64 {
        self.codes.values().sum::<u64>() as f64 / self.elapsed.as_secs_f64()
    }

    /// Percentile of OK latency, in milliseconds.
    pub fn ok_ms(&self, quantile: f64) -> f64 {
        self.ok_latency_us
            .as_ref()
            .filter(|h| !h.is_empty())
            .map_or(f64::NAN, |h| h.value_at_quantile(quantile) as f64 / 1000.0)
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_this_thread(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok()
        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok()
}

/// Two CPUs to keep apart (server, load), or None where the machine cannot: the test then
/// says SKIPPED, and fails under `CI=true` (CI must not pass on a test that did not run).
pub fn two_cpus_or_skip(test: &str) -> Option<(usize, usize)> {
    let cpus = allowed_cpus();
    let taskset = std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if cpus.len() >= 2 && taskset {
        return Some((cpus[0], cpus[1]));
    }
    let why = format!(
        "needs two CPUs and taskset to keep the server and the flood apart \
         (allowed CPUs {cpus:?}, taskset {})",
        if taskset { "found" } else { "missing" }
    );
    super::skip(test, &why);
    None
}

/// One gRPC message frame (uncompressed) holding `message`.
pub fn grpc_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0u8);
    out.extend((body.len() as u32).to_be_bytes());
    out.extend(body);
    Bytes::from(out)
}

/// A Search for a seeded random vector: `k` neighbours at breadth `ef`.
pub fn search_frame(dimensions: usize, k: u32, ef: u32, seed: u64) -> Bytes {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let vector: Vec<f32> = (0..dimensions)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    grpc_frame(&vecrig::proto::SearchRequest {
        query: Some(vecrig::proto::search_request::Query::Vector(
            vecrig::proto::Vector { values: vector },
        )),
        k,
        ef,
        ..Default::default()
    })
}

/// Runs `flood` on its own thread (pinned to `cpu` if given) and returns what it got.
pub fn run(flood: Flood, cpu: Option<usize>) -> std::thread::JoinHandle<Outcome> {
    std::thread::spawn(move || {
        if let Some(cpu) = cpu {
            pin_this_thread(cpu);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run_here(flood))
    })
}

async fn connect(flood: &Flood) -> Option<h2::client::SendRequest<Bytes>> {
    let socket = match flood.addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4().ok()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6().ok()?,
    };
    if let Some(ip) = flood.bind {
        socket.bind(SocketAddr::new(ip, 0)).ok()?;
    }
    let tcp: TcpStream = socket.connect(flood.addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(send)
}

async fn run_here(flood: Flood) -> Outcome {
    // Connect first, then start every stream at once: the window is the flood proper.
    let mut connections = Vec::with_capacity(flood.connections);
    for _ in 0..flood.connections {
        if let Some(send) = connect(&flood).await {
            connections.push(send);
        }
    }
    let started = Instant::now();
    let until = started + flood.duration;
    // One histogram for the whole flood, shared by its streams: they all run on this one
    // thread, so the lock is never contended. (A histogram each cost 160 KB apiece: at 12,800
    // streams, 2 GB of page faults before the first request left, the flood's whole window.)
    let latency = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for send in connections {
        for _ in 0..flood.streams {
            let (send, flood, latency) = (send.clone(), flood.clone(), Arc::clone(&latency));
            tasks.spawn(stream_loop(send, flood, until, latency));
        }
    }
    let mut outcome = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        let Ok(codes) = done else { continue };
        for (code, n) in codes {
            *outcome.codes.entry(code).or_default() += n;
        }
    }
    outcome.ok_latency_us = Some(std::mem::replace(
        &mut *latency.lock().unwrap_or_else(|p| p.into_inner()),
        Histogram::new(1).expect("histogram"),
    ));
    outcome.elapsed = flood.duration;
    outcome
}

/// One stream's closed loop: send, wait for the status, send again (after the think time, if
/// paced), until `until`.
/// The request head is parsed once: building it per request would make the flood slower
/// than the refusals it is meant to provoke.
async fn stream_loop(
    mut send: h2::client::SendRequest<Bytes>,
    flood: Flood,
    until: Instant,
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
) -> BTreeMap<i32, u64> {
    let mut codes = BTreeMap::new();
    let uri: http::Uri = format!("http://{}{}", flood.addr, flood.path)
        .parse()
        .expect("uri");
    let mut head = http::HeaderMap::new();
    head.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    head.insert("te", http::HeaderValue::from_static("trailers"));
    for (name, value) in &flood.headers {
        head.insert(*name, value.parse().expect("header value"));
    }
    let looping = async {
        while Instant::now() < until {
            let sent = Instant::now();
            let exchange = async {
                send = send.clone().ready().await.ok()?;
                let mut request = http::Request::new(());
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = head.clone();
                let (response, mut stream) = send.send_request(request, false).ok()?;
                stream.send_data(flood.body.clone(), true).ok()?;
                grpc_status(response.await.ok()?).await
            };
            let Some(code) = exchange.await else {
                // The connection failed: stop this stream.
                *codes.entry(-1).or_default() += 1;
                break;
            };
            // Only answers within the flood's window count: those waited for after it would
            // inflate its length and dilute the rates.
            if Instant::now() > until {
                break;
            }
            if code == 0 {
                let mut h = latency.lock().unwrap_or_else(|p| p.into_inner());
                let _ = h.record(sent.elapsed().as_micros().max(1) as u64);
            }
            *codes.entry(code).or_default() += 1;
            if let Some(interval) = flood.send_every {
                tokio::time::sleep_until(tokio::time::Instant::from_std(sent + interval)).await;
            }
        }
    };
    // Answers still outstanding a few seconds after the end are abandoned (their streams
    // reset), not waited for.
    let _ = tokio::time::timeout_at(
        tokio::time::Instant::from_std(until + Duration::from_secs(5)),
        looping,
    )
    .await;
    codes
}

/// The grpc-status of a response: from its headers (trailers-only answers) or its trailers.
pub async fn grpc_status(response: http::Response<h2::RecvStream>) -> Option<i32> {
    let from = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(code) = from(response.headers()) {
        return Some(code);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.ok()?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    body.trailers().await.ok().flatten().as_ref().and_then(from)
}

/// Health probes once a `every` until `stop`: the worst time a probe took to be answered
/// SERVING (a probe that failed or said otherwise counts as `Duration::MAX`).
pub async fn probe_health(
    target: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> (usize, Duration) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = vecrig::client::endpoint(&target, &vecrig::client::ConnectOptions::default())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let (mut probes, mut worst) = (0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            health.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await;
        let took = match answer {
            Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => sent.elapsed(),
            _ => Duration::MAX,
        };
        worst = worst.max(took);
        probes += 1;
        tokio::time::sleep(every).await;
    }
    (probes, worst)
}

/// A `vecrig-server` process pinned to one CPU (so it sizes itself to one CPU), killed on drop.
pub struct PinnedServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    _data: tempfile::TempDir,
}

impl PinnedServer {
    /// Starts the real binary on a copy of `fixture`, pinned to `cpu`, with `extra` flags.
    pub async fn start(fixture: &Path, dimensions: usize, cpu: usize, extra: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        super::copy_dir(fixture, data.path());
        Self::start_in(data, dimensions, cpu, extra, Duration::from_secs(120)).await
    }

    async fn start_in(
        data: tempfile::TempDir,
        dimensions: usize,
        cpu: usize,
        extra: &[&str],
        limit: Duration,
    ) -> Self {
        let mut command = Command::new("taskset");
        command
            .args(["-c", &cpu.to_string()])
            .arg(process::server_binary())
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .args(["--dimensions", &dimensions.to_string()])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra);
        let (child, addr, metrics) = match extra.contains(&"--metrics-listen") {
            true => {
                let (child, addr, metrics) = process::spawn_with_metrics(command).await;
                (child, addr, Some(metrics))
            }
            false => {
                let (child, addr) = process::spawn(command).await;
                (child, addr, None)
            }
        };
        let server = Self {
            child,
            addr,
            metrics,
            _data: data,
        };
        server.wait_serving(limit).await;
        server
    }

    /// Like [`PinnedServer::start`], with the metrics endpoint on a loopback port the server
    /// picks and prints.
    pub async fn start_with_metrics(
        fixture: &Path,
        dimensions: usize,
        cpu: usize,
        extra: &[&str],
    ) -> Self {
        let mut flags = vec!["--metrics-listen", "127.0.0.1:0"];
        flags.extend_from_slice(extra);
        Self::start(fixture, dimensions, cpu, &flags).await
    }

    /// The server's own CPU split so far, `(index, serving)` in seconds
    /// (`vecrig_cpu_seconds_total{part}`), if its metrics endpoint is on.
    pub async fn cpu_split(&self) -> Option<(f64, f64)> {
        let text = metrics::scrape(self.metrics?).await?;
        let part = |name: &str| {
            metrics::series(
                &text,
                &format!("vecrig_cpu_seconds_total{{part=\"{name}\"}}"),
            )
        };
        Some((part("index")?, part("serving")?))
    }

    /// `http://addr`.
    pub fn target(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_serving(&self, limit: Duration) {
        process::wait_serving(&self.target(), limit, Duration::from_millis(50)).await;
    }

    /// Resident memory of the server process, in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        // taskset execs the server: the pid is the server's.
        std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4096)
    }

    /// CPU time the server process has used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        let Some(pid) = self.child.id() else {
            return Duration::ZERO;
        };
        let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the command's closing parenthesis; utime and stime are 14, 15.
                let rest = s.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        // USER_HZ, in which /proc counts CPU time, is 100 on every Linux.
        Duration::from_millis(ticks * 10)
    }
}

/// A data directory with `points` preloaded points of `dimensions`, built once per shape for
/// the whole test binary by the real server (on any CPU), then copied for each server.
pub async fn fixture(dimensions: usize, points: u64) -> PathBuf {
    type Cell = Arc<tokio::sync::OnceCell<tempfile::TempDir>>;
    static FIXTURES: Mutex<BTreeMap<(usize, u64), Cell>> = Mutex::new(BTreeMap::new());
    let cell = Arc::clone(
        FIXTURES
            .lock()
            .expect("fixtures")
            .entry((dimensions, points))
            .or_default(),
    );
    cell.get_or_init(|| async {
        let data = tempfile::tempdir().expect("tempdir");
        let mut command = process::server_command();
        command
            .args(["--dimensions", &dimensions.to_string()])
            .args(["--preload", &points.to_string()])
            .arg("--data-dir")
            .arg(data.path());
        let (mut child, addr) = process::spawn(command).await;
        let target = format!("http://{addr}");
        process::wait_serving(
            &target,
            Duration::from_secs(300),
            Duration::from_millis(100),
        )
        .await;
        // SIGTERM: a graceful stop saves a snapshot, which the copies load at once.
        let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .expect("stops")
            .expect("wait");
        assert!(status.success(), "fixture server stopped cleanly: {status}");
        data
    })
    .await
    .path()
    .to_path_buf()
}
