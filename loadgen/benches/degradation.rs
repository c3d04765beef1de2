//! The degradation curve: goodput, admitted latency and shed answers from half of capacity to
//! ten times it, with admission on and off, in one run.
//!
//! Two `vecrig-server`s are started in turn on the same data (20,000 points x 64 dims, searches
//! at ef=512 so that capacity is a few hundred per second and ten times it is within what a
//! loadgen on the same two cores can send): one with admission as recommended for
//! latency-sensitive serving (`--queue-target 5ms`, `--queue-depth 256`), one with
//! `--no-admission` (no limit, no queue bound, no shedding). For each, capacity is measured
//! with a closed model (64 users), then the open model offers 0.5x, 1x, 2x, 5x and 10x of the
//! admission server's capacity, 10% upserts, no retries, 5 s deadlines. Per point: goodput,
//! admitted p50/p99, shed rate, shed-answer p99, dropped arrivals, server memory.
//!
//! Run: `cargo bench -p vecrig-loadgen --bench degradation` (release). It prints a markdown
//! table, and writes the loadgen's JSON and HTML reports for both servers to
//! `VECRIG_BENCH_OUT` (default `target/degradation/`). `VECRIG_BENCH_SECONDS` (default 8) is
//! each point's length.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vecrig::validation::report::{PhaseReport, Report};
use vecrig_loadgen::engine::{Model, Phase, Scenario, Stop};
use vecrig_loadgen::target::LocalServer;
use vecrig_loadgen::workload::{Workload, WorkloadKind};
use vecrig_loadgen::{RunOptions, run_with};

const POINTS: u64 = 20_000;
const DIMENSIONS: usize = 64;
const MULTIPLIERS: [f64; 5] = [0.5, 1.0, 2.0, 5.0, 10.0];

fn workload() -> Arc<Workload> {
    Workload::new(
        WorkloadKind::Mixed {
            upsert_fraction: 0.1,
            batch: 1,
        },
        DIMENSIONS,
        vecrig::synthetic::Synthetic::DEFAULT_SEED,
        10,
    )
}

fn options(target: &str) -> RunOptions {
    let mut options = RunOptions::new(target);
    options.timeout = Duration::from_secs(5);
    options.retry.max_attempts = 1;
    options
}

async fn capacity(target: &str) -> f64 {
    let report = run_with(&options(target), 42, &Stop::default(), |_| {
        vec![scenario(
            "capacity",
            vec![Phase {
                name: "closed-64".into(),
                model: Model::Closed {
                    users: 64,
                    iterations: None,
                    duration: Some(Duration::from_secs(6)),
                    think: Duration::ZERO,
                    stagger: None,
                },
            }],
        )]
    })
    .await
    .expect("pre-flight");
    report.scenarios[0].phases[0].qps
}

fn scenario(name: &str, phases: Vec<Phase>) -> Scenario {
    Scenario {
        name: name.into(),
        description: "offered load from 0.5x to 10x of capacity, open model, no retries".into(),
        parameters: Default::default(),
        phases,
        workload: workload(),
        thresholds: Vec::new(),
        monitor_every: None,
        check_recovery: false,
        timeout: None,
    }
}

async fn curve(target: &str, name: &str, capacity: f64, seconds: u64) -> Report {
    let phases = MULTIPLIERS
        .iter()
        .map(|m| Phase {
            name: format!("{m}x"),
            model: Model::Open {
                from: m * capacity,
                to: m * capacity,
                duration: Duration::from_secs(seconds),
                max_in_flight: 20_000,
            },
        })
        .collect();
    run_with(&options(target), 42, &Stop::default(), |_| {
        vec![scenario(name, phases)]
    })
    .await
    .expect("pre-flight")
}

async fn with_server<T>(extra: &[&str], run: impl AsyncFnOnce(&str) -> T) -> T {
    let mut args: Vec<String> = ["--dimensions", "64", "--ef-search", "512", "--log", "warn"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let server = LocalServer::spawn(
        &common::server_binary(Path::new(env!("CARGO_BIN_EXE_vecrig-loadgen"))),
        POINTS,
        None,
        &args,
    )
    .await
    .expect("start vecrig-server");
    let out = run(&server.target).await;
    server.stop(Duration::from_secs(30)).await;
    out
}

fn row(label: &str, p: &PhaseReport) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    format!(
        "| {label} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1}% | {:.2} | {} | {:.0} -> {:.0} |",
        p.name,
        p.requests as f64 / p.duration_s,
        p.qps,
        p.success_latency.p50_ms,
        p.success_latency.p99_ms,
        p.shed_rate() * 100.0,
        p.shed_latency.p99_ms,
        p.dropped,
        mb(p.server.rss_start_bytes),
        mb(p.server.rss_max_bytes),
    )
}

fn write(dir: &Path, name: &str, report: &Report) {
    std::fs::create_dir_all(dir).expect("out dir");
    let json = serde_json::to_vec_pretty(report).expect("json");
    std::fs::write(dir.join(format!("{name}.json")), json).expect("write json");
    std::fs::write(
        dir.join(format!("{name}.html")),
        vecrig_loadgen::html::render(report),
    )
    .expect("write html");
}

fn main() {
    let seconds = std::env::var("VECRIG_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let out = std::env::var("VECRIG_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/degradation")
        });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let admission = [
            "--queue-depth",
            "256",
            "--queue-target",
            "5ms",
            "--max-queue-wait",
            "1s",
        ];
        let (cap, on) = with_server(&admission, async |target| {
            let cap = capacity(target).await;
            (cap, curve(target, "admission-on", cap, seconds).await)
        })
        .await;
        // Both curves are offered the same rates: multiples of the admission server's capacity.
        let (cap_off, off) = with_server(&["--no-admission"], async |target| {
            let measured = capacity(target).await;
            (measured, curve(target, "admission-off", cap, seconds).await)
        })
        .await;
        write(&out, "admission-on", &on);
        write(&out, "admission-off", &off);
        println!("capacity (closed model, 64 users): {cap:.0} req/s with admission, {cap_off:.0} without");
        println!();
        println!("| server | offered | sent/s | goodput/s | ok p50 ms | ok p99 ms | shed | shed p99 ms | dropped | RSS MB |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for p in &on.scenarios[0].phases {
            println!("{}", row("admission on", p));
        }
        for p in &off.scenarios[0].phases {
            println!("{}", row("admission off", p));
        }
        let phases = &on.scenarios[0].phases;
        let peak = phases.iter().map(|p| p.qps).fold(0.0, f64::max);
        let (half, five) = (&phases[0], &phases[3]);
        println!();
        println!(
            "admission on, at 5x: goodput {:.0}% of peak (goal >= 95%), admitted p99 {:.2}x the p99 at 0.5x (goal <= 2), shed p99 {:.2} ms (goal <= 1 ms), RSS {:.0} -> {:.0} MB",
            five.qps / peak * 100.0,
            five.success_latency.p99_ms / half.success_latency.p99_ms,
            five.shed_latency.p99_ms,
            phases[0].server.rss_start_bytes as f64 / 1e6,
            phases.iter().map(|p| p.server.rss_max_bytes).max().unwrap_or(0) as f64 / 1e6,
        );
        let off_phases = &off.scenarios[0].phases;
        let off_peak = off_phases.iter().map(|p| p.qps).fold(0.0, f64::max);
        println!(
            "admission off, at 5x: goodput {:.0}% of its peak, admitted p99 {:.2}x its p99 at 0.5x",
            off_phases[3].qps / off_peak * 100.0,
            off_phases[3].success_latency.p99_ms / off_phases[0].success_latency.p99_ms,
        );
        println!("reports: {}", out.display());
    });
}
