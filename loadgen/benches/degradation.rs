//! The degradation curve: goodput, admitted latency and shed answers from half of capacity to
//! twenty times it, for several admission settings and without admission, in one run.
//!
//! The index (20,000 points x 64 dims) is built once; every series starts a `vecrig-server` on
//! a copy of it. Searches run at ef=512, 10% of requests are single-point upserts, no retries,
//! 5 s deadlines. The series: admission as recommended for latency-sensitive serving
//! (`--queue-depth 256 --queue-target 5ms --max-queue-wait 1s`) with the default limit
//! (one per server CPU), twice, four and eight times it, and `--adaptive-limit`; and
//! `--no-admission` (no limit, no queue bound, no shedding). Capacity is measured without
//! admission with a closed model (64 users); then every series is offered the same open-model
//! rates: 0.5x, 1x, 2x, 5x, 10x and 20x of it. Per point: goodput, admitted p50/p99, shed rate,
//! shed-answer p99, dropped arrivals, server memory, and the server's CPU as its own counters
//! split it (`vecrig_cpu_seconds_total`): the share spent serving rather than on index work,
//! and that serving CPU per answer (under overload almost every answer is a refusal, so it is
//! nearly the CPU a refusal costs); then a summary at 5x, and which won between the adaptive
//! limit and the best fixed one.
//!
//! The loadgen (this process) and the servers are pinned to separate halves of the CPUs
//! (`taskset`), so that at 10x the generator does not take the server's cores
//! (`VECRIG_BENCH_PIN=0` to share them).
//!
//! After the open-model points, every series takes closed-loop floods (issue 18): 16, 4,096
//! and 12,800 users over 128 connections, each sending again as soon as it is answered; per
//! flood, goodput as a share of the series' own capacity, and the same server figures.
//!
//! Then brownout against shedding alone (`--brownout`, see the server's `admission::brownout`):
//! the default limit with the recommended admission flags, with and without `--brownout`, on
//! vector searches only (recall is checked against the exact answer, which the mixed
//! workload's own upserts would move), offered 0.5x to 5x of the capacity of that workload.
//! Per point: goodput, recall@10 of 2% of the searches (mean and worst 5%), goodput counted
//! only where recall held >= 0.9, admitted p99, shed rate and the narrowest breadth the server
//! reported; and which won at 2x-5x.
//!
//! Then two tenants (issue 13): a polite client (from 127.0.0.2, a tenth of capacity on
//! schedule) beside an open-model flood from 127.0.0.1 at 1x, 2x, 5x and 10x of capacity, on
//! the default limit and queue, with fair admission (the default), with fair admission on one
//! request-path lane (`--request-lanes 1`, as before lanes) and with `--fifo-admission` (one
//! first-come-first-served queue, as before fairness). Per point: the polite client's
//! goodput and p99 against what it got with no flood, and the flood's goodput.
//!
//! Run: `cargo bench -p vecrig-loadgen --bench degradation` (release). It prints markdown
//! tables, and writes the loadgen's JSON and HTML reports for every series to
//! `VECRIG_BENCH_OUT` (default `target/degradation/`). `VECRIG_BENCH_SECONDS` (default 8) is
//! each point's length; `VECRIG_BENCH_PART=curve`, `=brownout` or `=tenants` runs one part
//! only.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vecrig::validation::report::{PhaseReport, Report};
use vecrig_loadgen::plan::scenario::{Model, Phase, Scenario};
use vecrig_loadgen::plan::workload::{Workload, WorkloadKind};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::target::LocalServer;
use vecrig_loadgen::{RunOptions, run_with};

const POINTS: u64 = 20_000;
const DIMENSIONS: usize = 64;
const MULTIPLIERS: [f64; 6] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0];

/// Closed-loop floods (issue 18): outstanding requests, kept up by users that send again as
/// soon as they are answered, like impatient clients; 16 is a light flood, 4,096 and 12,800
/// the heavy ones of `tests/collapse.rs`.
const FLOOD_USERS: [u64; 3] = [16, 4_096, 12_800];

/// Connections the floods come over (as `tests/collapse.rs`'s 128 x 100).
const FLOOD_CONNECTIONS: usize = 128;

/// Offered loads of the brownout comparison, in multiples of the search workload's capacity.
const BROWNOUT_MULTIPLIERS: [f64; 5] = [0.5, 1.0, 2.0, 3.0, 5.0];

/// Recall below this does not count as goodput in the brownout comparison.
const RECALL_FLOOR: f64 = 0.9;

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

/// The brownout comparison's workload: vector searches, k = 10, nothing written.
fn search_workload() -> Arc<Workload> {
    Workload::new(
        WorkloadKind::Vector,
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

async fn capacity(target: &str, workload: Arc<Workload>) -> f64 {
    let report = run_with(&options(target), 42, &Stop::default(), |_| {
        vec![scenario(
            "capacity",
            workload,
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

fn scenario(name: &str, workload: Arc<Workload>, phases: Vec<Phase>) -> Scenario {
    Scenario {
        name: name.into(),
        description: "offered load in multiples of capacity, open model, no retries".into(),
        parameters: Default::default(),
        phases,
        workload,
        thresholds: Vec::new(),
        monitor_every: None,
        check_recovery: false,
        timeout: None,
        identities: Vec::new(),
    }
}

/// The open-model points `multipliers` x `capacity` of `workload`, with `recall_sample` of
/// the searches checked.
async fn curve(
    target: &Endpoints,
    name: &str,
    workload: Arc<Workload>,
    (capacity, multipliers): (f64, &[f64]),
    seconds: u64,
    recall_sample: f64,
) -> Report {
    let phases = multipliers
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
    let mut options = options(&target.grpc);
    options.recall_sample = recall_sample;
    options.metrics_url = Some(target.metrics.clone());
    run_with(&options, 42, &Stop::default(), |_| {
        vec![scenario(name, workload, phases)]
    })
    .await
    .expect("pre-flight")
}

/// The closed-loop floods of [`FLOOD_USERS`], over [`FLOOD_CONNECTIONS`] connections.
async fn floods(target: &Endpoints, name: &str, workload: Arc<Workload>, seconds: u64) -> Report {
    let phases = FLOOD_USERS
        .iter()
        .map(|&users| Phase {
            name: format!("closed {users}"),
            model: Model::Closed {
                users,
                iterations: None,
                duration: Some(Duration::from_secs(seconds)),
                think: Duration::ZERO,
                stagger: None,
            },
        })
        .collect();
    let mut options = options(&target.grpc);
    options.connect.connections = FLOOD_CONNECTIONS;
    options.metrics_url = Some(target.metrics.clone());
    run_with(&options, 42, &Stop::default(), |_| {
        vec![scenario(name, workload, phases)]
    })
    .await
    .expect("pre-flight")
}

/// Server flags shared by every series (the bench's workload).
const SERVER_ARGS: [&str; 6] = ["--dimensions", "64", "--ef-search", "512", "--log", "warn"];

/// Admission as recommended for latency-sensitive serving; each admission series adds its limit.
const ADMISSION_ARGS: [&str; 6] = [
    "--queue-depth",
    "256",
    "--queue-target",
    "5ms",
    "--max-queue-wait",
    "1s",
];

/// One server configuration on the curve.
struct Series {
    /// Row label.
    label: String,
    /// File name of its reports.
    slug: String,
    /// Flags beyond [`SERVER_ARGS`].
    args: Vec<String>,
}

/// No admission first (capacity is measured on it), then the default limit (one per CPU),
/// twice, four and eight times it (the same limits as before the default moved from 2 x CPUs),
/// and the adaptive limit (starting at the default).
fn series(server_cpus: usize) -> Vec<Series> {
    let default = server_cpus;
    let fixed = |limit: usize, slug: &str| Series {
        label: if limit == default {
            format!("limit {limit} (default)")
        } else {
            format!("limit {limit}")
        },
        slug: slug.into(),
        args: ADMISSION_ARGS
            .iter()
            .map(|s| s.to_string())
            .chain(["--concurrency-limit".into(), limit.to_string()])
            .collect(),
    };
    vec![
        Series {
            label: "no admission".into(),
            slug: "admission-off".into(),
            args: vec!["--no-admission".into()],
        },
        fixed(default, "admission-on"),
        fixed(default * 2, "limit-double"),
        fixed(default * 4, "limit-quadruple"),
        fixed(default * 8, "limit-octuple"),
        Series {
            label: "adaptive".into(),
            slug: "adaptive".into(),
            args: ADMISSION_ARGS
                .iter()
                .map(|s| s.to_string())
                .chain(["--adaptive-limit".into()])
                .collect(),
        },
    ]
}

/// Keeps the loadgen (this process) and the server on separate CPUs, so that the curve
/// measures the server rather than two processes fighting over the same cores: the loadgen
/// gets the first half of the CPUs, the server the second (`taskset`). Off with
/// `VECRIG_BENCH_PIN=0`, or where there are fewer than 2 CPUs or no `taskset`.
struct Pinning {
    server_cpus: std::ops::Range<usize>,
    /// A script that starts `vecrig-server` on the server's CPUs.
    wrapper: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pinning {
    fn new() -> Option<Self> {
        if std::env::var("VECRIG_BENCH_PIN").is_ok_and(|v| v == "0") {
            return None;
        }
        let cpus = std::thread::available_parallelism().ok()?.get();
        if cpus < 2 {
            return None;
        }
        let (loadgen, server) = (0..cpus / 2, cpus / 2..cpus);
        let list = |r: &std::ops::Range<usize>| format!("{}-{}", r.start, r.end - 1);
        // This process has one thread yet (the runtime is built after): pin it, and the
        // threads it starts inherit the mask.
        let pinned = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &list(&loadgen)])
            .arg(std::process::id().to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?
            .success();
        if !pinned {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let wrapper = dir.path().join("vecrig-server");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec taskset -c {} {} \"$@\"\n",
                list(&server),
                server_binary().display()
            ),
        )
        .ok()?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).ok()?;
        Some(Self {
            server_cpus: server,
            wrapper,
            _dir: dir,
        })
    }
}

/// Where a series' server answers.
struct Endpoints {
    /// `http://127.0.0.1:PORT`.
    grpc: String,
    /// Its Prometheus endpoint, scraped at every point's start and end.
    metrics: String,
}

/// Runs `run` against a server started on a copy of `data` (so that every series starts
/// from the same index, whatever the previous one's upserts did).
/// `run` gets the server's gRPC target and its metrics URL.
async fn with_server<T>(
    binary: &Path,
    data: &Path,
    extra: &[String],
    run: impl AsyncFnOnce(&Endpoints) -> T,
) -> T {
    let copy = tempfile::tempdir().expect("temp dir");
    vecrig_loadgen::target::copy_data_dir(data, copy.path()).expect("copy the index");
    let args: Vec<String> = SERVER_ARGS
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .chain(["--metrics-listen".into(), "127.0.0.1:0".into()])
        .collect();
    let server = LocalServer::spawn(binary, POINTS, Some(copy.path()), None, &args)
        .await
        .expect("start vecrig-server");
    let endpoints = Endpoints {
        grpc: server.target.clone(),
        metrics: server
            .metrics_url
            .clone()
            .expect("the metrics endpoint is on"),
    };
    let out = run(&endpoints).await;
    server.stop(Duration::from_secs(30)).await;
    out
}

fn server_binary() -> PathBuf {
    common::server_binary(Path::new(env!("CARGO_BIN_EXE_vecrig-loadgen")))
}

fn row(label: &str, p: &PhaseReport) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    format!(
        "| {label} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1}% | {:.2} | {} | {:.0} -> {:.0} | {} |",
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
        serving_cpu_cell(p),
    )
}

/// The server's CPU over a point, from its own counters (`vecrig_cpu_seconds_total`): the
/// share that went to serving (everything but index work: connections, HTTP/2, admission,
/// refusals) and that serving CPU per answer given (any method, any code), in microseconds.
fn serving_cpu(p: &PhaseReport) -> Option<(f64, f64)> {
    let cpu = |part: &str| {
        p.server_counts
            .get(&format!("vecrig_cpu_seconds_total{{part=\"{part}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    let (serving, index) = (cpu("serving"), cpu("index"));
    let answers: f64 = p
        .server_counts
        .iter()
        .filter(|(series, _)| series.starts_with("vecrig_grpc_requests_total{"))
        .map(|(_, n)| n)
        .sum();
    (serving + index > 0.0 && answers > 0.0)
        .then(|| (serving / (serving + index), serving / answers * 1e6))
}

/// [`serving_cpu`] as a table cell: `share / µs per answer`.
fn serving_cpu_cell(p: &PhaseReport) -> String {
    serving_cpu(p).map_or("-".into(), |(share, per_answer)| {
        format!("{:.0}% / {per_answer:.0} µs", share * 100.0)
    })
}

fn write(dir: &Path, name: &str, report: &Report) {
    std::fs::create_dir_all(dir).expect("out dir");
    let json = serde_json::to_vec_pretty(report).expect("json");
    std::fs::write(dir.join(format!("{name}.json")), json).expect("write json");
    std::fs::write(
        dir.join(format!("{name}.html")),
        vecrig_loadgen::report::html::render(report),
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
    let pinning = Pinning::new();
    let binary = pinning
        .as_ref()
        .map_or_else(server_binary, |p| p.wrapper.clone());
    let server_cpus = pinning.as_ref().map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |p| p.server_cpus.len(),
    );
    let part = std::env::var("VECRIG_BENCH_PART").unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // Build the index once; each series starts from a copy of it.
        let data = tempfile::tempdir().expect("temp dir");
        let server = LocalServer::spawn(
            &binary,
            POINTS,
            Some(data.path()),
            None,
            &SERVER_ARGS.map(String::from),
        )
        .await
        .expect("start vecrig-server");
        server.stop(Duration::from_secs(60)).await;
        match &pinning {
            Some(p) => println!(
                "server on CPUs {:?}, loadgen on the others (taskset)",
                p.server_cpus
            ),
            None => println!("server and loadgen share all CPUs (not pinned)"),
        }
        let runs = |name: &str| part.is_empty() || part == name;
        if runs("curve") {
            degradation_curve(&binary, data.path(), server_cpus, seconds, &out).await;
        }
        if runs("brownout") {
            brownout_against_shedding(&binary, data.path(), server_cpus, seconds, &out).await;
        }
        if runs("tenants") {
            two_tenants(&binary, data.path(), seconds, &out).await;
        }
        println!("reports: {}", out.display());
    });
}

/// The degradation curve of every admission setting (the module docs' first part).
async fn degradation_curve(
    binary: &Path,
    data: &Path,
    server_cpus: usize,
    seconds: u64,
    out: &Path,
) {
    let mut capacity_default = None;
    let mut results = Vec::new();
    let mut flood_results = Vec::new();
    for series in series(server_cpus) {
        let (measured, report) = with_server(binary, data, &series.args, async |target| {
            let measured = capacity(&target.grpc, workload()).await;
            // Every series is offered the same rates: multiples of the capacity of the bare
            // server (no admission: nothing is shed, so 64 closed-loop users keep its
            // cores busy; with admission, shed answers would count against capacity).
            let base = *capacity_default.get_or_insert(measured);
            let curve = curve(
                target,
                &series.slug,
                workload(),
                (base, &MULTIPLIERS),
                seconds,
                0.0,
            )
            .await;
            let floods = floods(
                target,
                &format!("{}-floods", series.slug),
                workload(),
                seconds,
            )
            .await;
            (measured, (curve, floods))
        })
        .await;
        let (report, flood_report) = report;
        write(out, &series.slug, &report);
        write(out, &format!("{}-floods", series.slug), &flood_report);
        eprintln!("{}: capacity {measured:.0} req/s", series.label);
        results.push((series, measured, report));
        flood_results.push((measured, flood_report));
    }

    let base = capacity_default.unwrap_or_default();
    println!();
    println!(
        "offered load: multiples of {base:.0} req/s (the capacity without admission, closed model of 64 users)"
    );
    println!();
    println!(
        "| server | offered | sent/s | goodput/s | ok p50 ms | ok p99 ms | shed | shed p99 ms | dropped | RSS MB | serving CPU: share / per answer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (series, _, report) in &results {
        for p in &report.scenarios[0].phases {
            println!("{}", row(&series.label, p));
        }
    }
    println!();
    println!(
        "closed-loop floods over {FLOOD_CONNECTIONS} connections; goodput as a share of the series' own capacity (closed model of 64 users, measured just before)"
    );
    println!();
    println!(
        "| server | outstanding | answers/s | goodput/s | of capacity | ok p50 ms | ok p99 ms | shed | RSS MB | serving CPU: share / per answer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for ((series, _, _), (measured, report)) in results.iter().zip(&flood_results) {
        for p in &report.scenarios[0].phases {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1}% | {:.0} -> {:.0} | {} |",
                series.label,
                p.name.trim_start_matches("closed "),
                p.requests as f64 / p.duration_s,
                p.qps,
                p.qps / measured.max(f64::EPSILON),
                p.success_latency.p50_ms,
                p.success_latency.p99_ms,
                p.shed_rate() * 100.0,
                p.server.rss_start_bytes as f64 / 1e6,
                p.server.rss_max_bytes as f64 / 1e6,
                serving_cpu_cell(p),
            );
        }
    }
    println!();
    println!(
        "| server | capacity/s | peak goodput/s | goodput at 5x | % of best peak | ok p99 at 0.5x ms | ok p99 at 5x ms | ratio | shed p99 at 5x ms | RSS max MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let best_peak = results
        .iter()
        .flat_map(|(_, _, r)| r.scenarios[0].phases.iter().map(|p| p.qps))
        .fold(0.0, f64::max);
    let summaries: Vec<Summary> = results
        .iter()
        .map(|(series, measured, report)| Summary::of(&series.label, *measured, report))
        .collect();
    for s in &summaries {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.1} | {:.1} | {:.1}x | {:.2} | {:.0} |",
            s.label,
            s.capacity,
            s.peak,
            s.five.qps,
            s.five.qps / best_peak * 100.0,
            s.half.success_latency.p99_ms,
            s.five.success_latency.p99_ms,
            s.five.success_latency.p99_ms / s.half.success_latency.p99_ms,
            s.five.shed_latency.p99_ms,
            s.rss_max as f64 / 1e6,
        );
    }
    println!();
    // Which won: the adaptive limit against the best fixed limit, at 5x (goodput first,
    // then admitted p99).
    let fixed = summaries.iter().filter(|s| s.label.starts_with("limit"));
    let best = fixed
        .max_by(|a, b| a.five.qps.total_cmp(&b.five.qps))
        .expect("fixed series");
    if let Some(adaptive) = summaries.iter().find(|s| s.label == "adaptive") {
        let (g, p) = (
            adaptive.five.qps / best.five.qps,
            adaptive.five.success_latency.p99_ms / best.five.success_latency.p99_ms,
        );
        let verdict = if g >= 1.0 && p <= 1.0 {
            "adaptive wins"
        } else if g < 1.0 && p > 1.0 {
            "the fixed limit wins"
        } else {
            "neither dominates"
        };
        println!(
            "at 5x, adaptive vs the best fixed ({}): goodput {g:.2}x, admitted p99 {p:.2}x: {verdict}",
            best.label
        );
    }
    let default = &summaries[1];
    println!(
        "{} at 5x: goodput {:.0}% of its peak (goal >= 95%), admitted p99 {:.2}x the p99 at 0.5x (goal <= 2), shed p99 {:.2} ms (goal <= 1 ms)",
        default.label,
        default.five.qps / default.peak * 100.0,
        default.five.success_latency.p99_ms / default.half.success_latency.p99_ms,
        default.five.shed_latency.p99_ms,
    );
    println!(
        "{} at 20x: goodput {:.0}% of its peak (goal >= 90%), {} arrivals the loadgen could not send on time (dropped)",
        default.label,
        default.twenty.qps / default.peak * 100.0,
        default.twenty.dropped,
    );
}

/// Share of the searches whose recall the brownout comparison checks.
const RECALL_SAMPLE: f64 = 0.02;

/// Brownout against shedding alone (the module docs' second part).
async fn brownout_against_shedding(
    binary: &Path,
    data: &Path,
    server_cpus: usize,
    seconds: u64,
    out: &Path,
) {
    let admission: Vec<String> = ADMISSION_ARGS
        .iter()
        .map(|s| s.to_string())
        .chain(["--concurrency-limit".into(), server_cpus.to_string()])
        .collect();
    // The rates offered are multiples of what the bare server serves of this workload.
    let base = with_server(binary, data, &["--no-admission".into()], async |target| {
        capacity(&target.grpc, search_workload()).await
    })
    .await;
    let mut results = Vec::new();
    for (label, slug, brownout) in [
        ("shedding alone", "brownout-off", false),
        ("brownout", "brownout-on", true),
    ] {
        let mut args = admission.clone();
        if brownout {
            args.push("--brownout".into());
        }
        let report = with_server(binary, data, &args, async |target| {
            let points = (base, &BROWNOUT_MULTIPLIERS[..]);
            curve(
                target,
                slug,
                search_workload(),
                points,
                seconds,
                RECALL_SAMPLE,
            )
            .await
        })
        .await;
        write(out, slug, &report);
        results.push((label, report));
    }

    println!();
    println!(
        "brownout against shedding alone: vector searches (k = 10, ef 512), multiples of {base:.0} req/s \
         (their capacity without admission), default limit {} with the recommended admission flags, \
         recall of {:.0}% of the searches",
        server_cpus,
        RECALL_SAMPLE * 100.0
    );
    println!();
    println!(
        "| server | offered | goodput/s | recall@10 mean | recall worst 5% | goodput at recall >= {RECALL_FLOOR} | ok p99 ms | shed | narrowest ef share | serving CPU: share / per answer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (label, report) in &results {
        for p in &report.scenarios[0].phases {
            let (mean, worst) = p.recall.as_ref().filter(|r| r.queries > 0).map_or(
                ("-".to_string(), "-".to_string()),
                |r| {
                    (
                        format!("{:.3}", r.mean()),
                        format!("{:.3}", r.worst_5_percent()),
                    )
                },
            );
            println!(
                "| {label} | {} | {:.0} | {mean} | {worst} | {:.0} | {:.1} | {:.1}% | {} | {} |",
                p.name,
                p.qps,
                goodput_at_recall(p),
                p.success_latency.p99_ms,
                p.shed_rate() * 100.0,
                p.server
                    .min_search_breadth
                    .map_or("1".to_string(), |b| format!("{b:.2}")),
                serving_cpu_cell(p),
            );
        }
    }
    println!();
    // Which won: goodput at recall >= the floor, point by point from 2x to 5x.
    let overloaded = |report: &Report| -> Vec<(String, f64)> {
        report.scenarios[0]
            .phases
            .iter()
            .zip(BROWNOUT_MULTIPLIERS)
            .filter(|(_, m)| *m >= 2.0)
            .map(|(p, _)| (p.name.clone(), goodput_at_recall(p)))
            .collect()
    };
    let (off, on) = (overloaded(&results[0].1), overloaded(&results[1].1));
    let ratios: Vec<String> = off
        .iter()
        .zip(&on)
        .map(|((name, off), (_, on))| format!("{name} {:.2}x", on / off.max(1e-9)))
        .collect();
    let wins = off
        .iter()
        .zip(&on)
        .filter(|((_, off), (_, on))| on > off)
        .count();
    let verdict = match wins {
        n if n == off.len() => "brownout wins",
        0 => "shedding alone wins",
        _ => "neither wins at every point",
    };
    println!(
        "goodput at recall >= {RECALL_FLOOR}, brownout / shedding alone: {}: {verdict}",
        ratios.join(", ")
    );
}

/// A point's goodput, counted only if its sampled recall held: 0 below [`RECALL_FLOOR`] or
/// when nothing could be checked.
fn goodput_at_recall(p: &PhaseReport) -> f64 {
    match &p.recall {
        Some(r) if r.queries > 0 && r.mean() >= RECALL_FLOOR => p.qps,
        _ => 0.0,
    }
}

/// One series' figures at the points the goals name.
struct Summary {
    label: String,
    capacity: f64,
    peak: f64,
    half: PhaseReport,
    five: PhaseReport,
    twenty: PhaseReport,
    rss_max: u64,
}

impl Summary {
    fn of(label: &str, capacity: f64, report: &Report) -> Self {
        let phases = &report.scenarios[0].phases;
        Self {
            label: label.into(),
            capacity,
            peak: phases.iter().map(|p| p.qps).fold(0.0, f64::max),
            half: phases[0].clone(),
            five: phases[3].clone(),
            twenty: phases[5].clone(),
            rss_max: phases
                .iter()
                .map(|p| p.server.rss_max_bytes)
                .max()
                .unwrap_or(0),
        }
    }
}

/// The flood's offered load in the two-tenant comparison, in multiples of capacity.
const TENANT_MULTIPLIERS: [f64; 4] = [1.0, 2.0, 5.0, 10.0];

/// The polite tenant's rate, as a share of capacity.
const POLITE_SHARE: f64 = 0.1;

/// A polite client's outcome beside a flood, and the flood's.
struct TenantPoint {
    flood_offered: String,
    /// Of the same schedule as alone (same seed, same arrivals).
    polite_served: u64,
    polite_p99_ms: f64,
    polite_not_ok: u64,
    /// OK answers over the point's scheduled length (the phases' own wall time includes
    /// the flood's drain).
    flood_goodput: f64,
}

/// The two-tenant comparison (the module docs' last part): fair admission against FIFO.
async fn two_tenants(binary: &Path, data: &Path, seconds: u64, out: &Path) {
    let flood = vecrig_loadgen::plan::scenario::Identity {
        bind: Some(std::net::Ipv4Addr::new(127, 0, 0, 1).into()),
        token: None,
    };
    let polite = vecrig_loadgen::plan::scenario::Identity {
        bind: Some(std::net::Ipv4Addr::new(127, 0, 0, 2).into()),
        token: None,
    };
    let duration = Duration::from_secs(seconds);
    let mut tables = Vec::new();
    for (label, slug, extra) in [
        ("fair admission (default)", "tenants-fair", vec![]),
        (
            "fair, one request-path lane (`--request-lanes 1`)",
            "tenants-fair-one-lane",
            vec!["--request-lanes".to_string(), "1".to_string()],
        ),
        (
            "FIFO (`--fifo-admission`)",
            "tenants-fifo",
            vec!["--fifo-admission".to_string()],
        ),
    ] {
        let (capacity, alone, points, report) = with_server(binary, data, &extra, async |target| {
            let capacity = capacity(&target.grpc, search_workload()).await;
            let polite_rate = capacity * POLITE_SHARE;
            let polite_phase = || Phase {
                name: "polite".into(),
                model: Model::Paced {
                    workers: 8,
                    rate: polite_rate,
                    duration,
                },
            };
            let mut scenarios = vec![Scenario {
                identities: vec![polite.clone()],
                ..scenario("polite-alone", search_workload(), vec![polite_phase()])
            }];
            for m in TENANT_MULTIPLIERS {
                let flood_phase = Phase {
                    name: "flood".into(),
                    model: Model::Open {
                        from: m * capacity,
                        to: m * capacity,
                        duration,
                        max_in_flight: 20_000,
                    },
                };
                scenarios.push(Scenario {
                    identities: vec![flood.clone(), polite.clone()],
                    ..scenario(
                        &format!("flood-{m}x"),
                        search_workload(),
                        vec![flood_phase, polite_phase()],
                    )
                });
            }
            let mut options = options(&target.grpc);
            options.metrics_url = Some(target.metrics.clone());
            let report = run_with(&options, 42, &Stop::default(), |_| scenarios)
                .await
                .expect("pre-flight");
            let phase = |scenario: usize, name: &str| {
                report.scenarios[scenario]
                    .phases
                    .iter()
                    .find(|p| p.name == name)
                    .expect("phase")
                    .clone()
            };
            let alone = phase(0, "polite");
            let points: Vec<TenantPoint> = TENANT_MULTIPLIERS
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let (p, f) = (phase(i + 1, "polite"), phase(i + 1, "flood"));
                    TenantPoint {
                        flood_offered: format!("{m}x"),
                        polite_served: p.code("OK"),
                        polite_p99_ms: p.success_latency.p99_ms,
                        polite_not_ok: p.requests.saturating_sub(p.code("OK")),
                        flood_goodput: f.code("OK") as f64 / seconds as f64,
                    }
                })
                .collect();
            (capacity, alone, points, report)
        })
        .await;
        write(out, slug, &report);
        tables.push((label, capacity, alone, points));
    }
    println!("\n## Two tenants: a polite client beside a flood (issue 13)\n");
    println!(
        "Polite client from 127.0.0.2 at {:.0}% of capacity on schedule; the flood from \
         127.0.0.1, open model; default limit and queue; {seconds} s a point.\n",
        POLITE_SHARE * 100.0
    );
    println!(
        "| admission | flood offered | polite served, % of alone | polite p99 ms (alone) | \
         polite not OK | flood goodput, % of capacity |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, capacity, alone, points) in &tables {
        for p in points {
            println!(
                "| {label} | {} | {:.1}% | {:.1} ({:.1}) | {} | {:.0}% |",
                p.flood_offered,
                p.polite_served as f64 / alone.code("OK").max(1) as f64 * 100.0,
                p.polite_p99_ms,
                alone.success_latency.p99_ms,
                p.polite_not_ok,
                p.flood_goodput / capacity * 100.0,
            );
        }
    }
    println!(
        "\nGoal (issue 13): the polite client's goodput within 5% of what it gets alone, at \
         every point, with fair admission."
    );
}
