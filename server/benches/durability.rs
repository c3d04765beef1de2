//! Durability benchmark: what the write-ahead log costs and how fast a crash is recovered.
//!
//! Run: `cargo bench -p vecrig-server --bench durability` (release). It measures
//! 1. ingestion: acknowledged points per second for 128-d points at batch sizes 1, 64 and 512,
//!    16 concurrent writers over gRPC, durability on (every acknowledgement follows an
//!    fdatasync), and beside it the log alone (group commits of 16 records, no index);
//! 2. indexing: after the batch-512 run, how fast the graph takes the points acknowledged ahead
//!    of it (`Stats.unindexed` until 0), and search latency from one client meanwhile;
//! 3. recovery: a real `vecrig-server` with 100k points in its snapshot and a log tail of 10k
//!    records is killed with SIGKILL, restarted, and timed from spawn to SERVING; then search
//!    latency while it indexes the replayed tail.
//!
//! `VECRIG_BENCH_SECONDS` (default 5) sets each ingestion run's length.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use vecrig::client::{ConnectOptions, Pool};
use vecrig::proto::{self, point};
use vecrig::synthetic::Synthetic;
use vecrig_server::config::Config;
use vecrig_server::index::store::Payload;
use vecrig_server::storage::wal::{Record, Wal};

const DIMS: usize = 128;
const WRITERS: u64 = 16;

fn seconds() -> u64 {
    std::env::var("VECRIG_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

async fn wait_serving(target: &str) {
    let started = Instant::now();
    loop {
        if let Ok(t) =
            vecrig::validation::StressTester::connect(target, &ConnectOptions::default()).await
            && matches!(
                t.health().await,
                Ok(tonic_health::pb::health_check_response::ServingStatus::Serving)
            )
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never SERVING"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn points(data: &Synthetic, first_id: u64, n: usize) -> Vec<proto::Point> {
    (0..n as u64)
        .map(|i| proto::Point {
            id: first_id + i,
            data: Some(point::Data::Vector(proto::Vector {
                values: data.point(first_id + i).vector,
            })),
            payload: HashMap::from([("n".to_string(), i.to_string())]),
        })
        .collect()
}

/// 16 writers upserting `batch`-point requests for `duration`; acknowledged points per second
/// and request latency percentiles.
async fn ingest(target: &str, batch: usize, duration: Duration, id_base: u64) -> (f64, f64, f64) {
    let pool = Pool::connect(
        target,
        &ConnectOptions {
            connections: 4,
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("connect");
    let data = Arc::new(Synthetic::new(DIMS, 64, 1));
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (pool, data, acked) = (pool.clone(), Arc::clone(&data), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut next = id_base + w * 100_000_000;
            while started.elapsed() < duration {
                let request = proto::UpsertRequest {
                    points: points(&data, next, batch),
                    wait: false,
                };
                next += batch as u64;
                let sent = Instant::now();
                pool.client().upsert(request).await.expect("upsert");
                latencies.push(sent.elapsed());
                acked.fetch_add(batch as u64, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("writer"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (
        acked.load(Ordering::Relaxed) as f64 / elapsed,
        at(0.5),
        at(0.99),
    )
}

/// The log alone: group commits of 16 `batch`-point records, one fdatasync each.
fn wal_alone(batch: usize, duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), 0).expect("open");
    let data = Synthetic::new(DIMS, 64, 1);
    let record = Record::Upsert(
        (0..batch as u64)
            .map(|i| (i, data.point(i).vector, Payload::new()))
            .collect(),
    );
    let group: Vec<&Record> = (0..WRITERS).map(|_| &record).collect();
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < duration {
        wal.append(&group).expect("append");
        written += WRITERS * batch as u64;
    }
    written as f64 / started.elapsed().as_secs_f64()
}

async fn ingestion() {
    let duration = Duration::from_secs(seconds());
    println!(
        "## ingestion: {WRITERS} writers, 128-d points, wait=false (acknowledged once durable)"
    );
    println!("| batch | acked points/s | request p50 ms | request p99 ms | log alone points/s |");
    println!("|---:|---:|---:|---:|---:|");
    let mut drained = None;
    for batch in [1usize, 64, 512] {
        let temp = tempfile::tempdir().expect("tempdir");
        let config = Config::new(temp.path(), DIMS);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(vecrig_server::serve(listener, config, async {
            let _ = stopped.await;
        }));
        wait_serving(&target).await;
        let (rate, p50, p99) = ingest(&target, batch, duration, 0).await;
        if batch == 512 {
            drained = Some(search_while_indexing(&target).await);
        }
        let _ = stop.send(());
        server.await.expect("server task").expect("server");
        let alone = tokio::task::spawn_blocking(move || wal_alone(batch, duration))
            .await
            .expect("wal bench");
        println!("| {batch} | {rate:.0} | {p50:.2} | {p99:.2} | {alone:.0} |");
    }
    if let Some(drained) = drained {
        println!("after the batch-512 run: {drained}");
    }
}

/// What happened while the graph caught up with the acknowledged points.
struct Drained {
    points: u64,
    seconds: f64,
    searches: usize,
    p50_ms: f64,
    p99_ms: f64,
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unindexed points indexed in {:.2} s ({:.0} points/s); {} searches (k=10, 1 client) \
             meanwhile: p50 {:.2} ms, p99 {:.2} ms",
            self.points,
            self.seconds,
            self.points as f64 / self.seconds.max(1e-9),
            self.searches,
            self.p50_ms,
            self.p99_ms
        )
    }
}

/// Searches from one client until `Stats.unindexed` is 0: the indexing rate, and search
/// latency while the tail is scanned beside the graph.
async fn search_while_indexing(target: &str) -> Drained {
    let tester = vecrig::validation::StressTester::connect(target, &ConnectOptions::default())
        .await
        .expect("connect");
    let mut client = vecrig::client::connect(target, &ConnectOptions::default())
        .await
        .expect("connect");
    let data = Synthetic::new(DIMS, 64, 1);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let first = tester.stats().await.expect("stats").unindexed;
    let started = Instant::now();
    let mut latencies = Vec::new();
    loop {
        for _ in 0..20 {
            let request = proto::SearchRequest {
                query: Some(proto::search_request::Query::Vector(proto::Vector {
                    values: data.query_vector(&mut rng),
                })),
                k: 10,
                ..Default::default()
            };
            let sent = Instant::now();
            client.search(request).await.expect("search");
            latencies.push(sent.elapsed());
        }
        if tester.stats().await.expect("stats").unindexed == 0 {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    Drained {
        points: first,
        seconds,
        searches: latencies.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

struct Child {
    child: tokio::process::Child,
    target: String,
}

async fn spawn(dir: &std::path::Path, preload: u64) -> (Child, Duration) {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vecrig-server"))
        .args(["--listen", "127.0.0.1:0", "--log", "info"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--preload", &preload.to_string()])
        // The tail must stay in the log: no snapshot during the writes.
        .args([
            "--snapshot-wal-bytes",
            "1099511627776",
            "--snapshot-interval",
            "1h",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next_line().await.expect("read").expect("line");
    let target = format!("http://{}", line.trim_start_matches("listening on "));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    wait_serving(&target).await;
    (Child { child, target }, started.elapsed())
}

async fn recovery() {
    const POINTS: u64 = 100_000;
    const TAIL: u64 = 10_000;
    println!(
        "\n## recovery: {POINTS} points in the snapshot, {TAIL} single-point records in the log"
    );
    let temp = tempfile::tempdir().expect("tempdir");
    let (mut first, build) = spawn(temp.path(), POINTS).await;
    println!(
        "first start with --preload {POINTS} (graph build + snapshot): {:.1} s",
        build.as_secs_f64()
    );
    let pool = Pool::connect(&first.target, &ConnectOptions::default())
        .await
        .expect("connect");
    let data = Arc::new(Synthetic::new(DIMS, 64, 1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (pool, data) = (pool.clone(), Arc::clone(&data));
        tasks.push(tokio::spawn(async move {
            for i in (w..TAIL).step_by(WRITERS as usize) {
                let request = proto::UpsertRequest {
                    points: points(&data, 1_000_000 + i, 1),
                    wait: false,
                };
                pool.client().upsert(request).await.expect("upsert");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    println!(
        "{TAIL} acknowledged writes in {:.1} s, then SIGKILL",
        started.elapsed().as_secs_f64()
    );
    first.child.kill().await.expect("kill -9");
    let (mut second, recovered) = spawn(temp.path(), 0).await;
    let stats =
        vecrig::validation::StressTester::connect(&second.target, &ConnectOptions::default())
            .await
            .expect("connect")
            .stats()
            .await
            .expect("stats");
    assert_eq!(
        stats.points,
        POINTS + TAIL,
        "every acknowledged write recovered"
    );
    println!(
        "recovery after SIGKILL: {:.2} s from spawn to SERVING ({} points, {} unindexed)",
        recovered.as_secs_f64(),
        stats.points,
        stats.unindexed
    );
    println!(
        "then, while it indexes the replayed tail: {}",
        search_while_indexing(&second.target).await
    );
    // A clean stop snapshots; the restart after it replays nothing.
    if let Some(pid) = second.child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = second.child.wait().await;
    let (mut third, clean) = spawn(temp.path(), 0).await;
    println!(
        "restart after a clean stop (snapshot only): {:.2} s from spawn to SERVING",
        clean.as_secs_f64()
    );
    third.child.kill().await.expect("kill");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        ingestion().await;
        recovery().await;
    });
}
