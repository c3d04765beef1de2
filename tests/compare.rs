//! The regression gate against a real server: two runs of the same build pass; the same load
//! against a server made slower (a wide `ef` and one request at a time) is a latency and
//! goodput regression, named, exit 99, both through `compare` and through `--baseline` on the
//! run itself; against a less accurate one (`ef` 1) a recall regression; reports of different
//! scenarios, parameters or schema are refused with exit 1 and the reason.
//!
//! Each run is two seconds. How often two runs of one build are flagged at the default
//! tolerances is a measurement, not a test: `loadgen/benches/compare_false_alarms.rs`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::TestServer;
use crate::common::process::loadgen_binary;
use vecrig::validation::report::Report;
use vecrig_loadgen::compare::{Comparison, Verdict};
use vecrig_loadgen::plan::scenario::Stage;
use vecrig_loadgen::plan::suite::{ExtremeConcurrency, Load, LoadModel};
use vecrig_loadgen::plan::workload::WorkloadKind;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

// The fixture tests/recall.rs uses too: built once per test binary.
const DIMENSIONS: usize = 128;
const POINTS: u64 = 10_000;

/// Two runs of one build on a machine shared with the other tests, running in parallel: the
/// noise there is far beyond a quiet CI runner's, so the same-build check gets tolerances
/// sized to it. The regressions below are found at the default tolerances.
const SHARED_MACHINE_TOLERANCES: &str =
    "p50+100%,p90+150%,p99+300%,p99.9+500%,goodput-50%,error_rate+2pp";

/// The loadgen binary with `args`, its output once it exits (blocking, off the runtime).
async fn loadgen(args: Vec<String>, env: &[(&str, &str)]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(loadgen_binary())
            .args(&args)
            .envs(env)
            .output()
            .expect("run the loadgen")
    })
    .await
    .expect("join")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A closed load of 4 users for 2 s through the binary, its report at `out`.
fn run_args(target: &str, out: &Path) -> Vec<String> {
    let mut args = strings(&[
        "--target",
        target,
        "--no-progress",
        "--no-default-thresholds",
        "--recall-sample",
        "0",
        "--workload",
        "vector",
        "--out",
    ]);
    args.push(path(out));
    args.extend(strings(&[
        "load", "--model", "closed", "--stages", "2s:4", "--think", "1ms",
    ]));
    args
}

/// `compare BASE... NEW --out DIR/comparison.json --html DIR/comparison.html`: the exit code,
/// the comparison (when written) and stderr.
async fn compare(
    dir: &Path,
    reports: &[&Path],
    env: &[(&str, &str)],
) -> (i32, Option<Comparison>, String) {
    let json = dir.join("comparison.json");
    let _ = std::fs::remove_file(&json);
    let mut args = strings(&["compare"]);
    args.extend(reports.iter().map(|p| path(p)));
    args.extend(["--out".into(), path(&json), "--html".into()]);
    args.push(path(&dir.join("comparison.html")));
    let output = loadgen(args, env).await;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    eprint!("{stderr}");
    let comparison = std::fs::read(&json)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).expect("comparison JSON"));
    (output.status.code().unwrap_or(-1), comparison, stderr)
}

/// Whether `metric` of some phase was judged `verdict`.
fn judged(comparison: &Comparison, metric: &str, verdict: Verdict) -> bool {
    comparison
        .scenarios
        .iter()
        .flat_map(|s| &s.phases)
        .flat_map(|p| &p.changes)
        .any(|c| c.metric == metric && c.verdict == verdict)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_server_is_a_named_regression_and_the_same_build_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.json");
    let same = dir.path().join("same.json");
    let slow = dir.path().join("slow.json");

    let server = crate::common::start_preloaded(DIMENSIONS, POINTS, |_| {}).await;
    let out = loadgen(run_args(&server.target(), &base), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The run and the comparison in one step.
    let mut args = run_args(&server.target(), &same);
    args.extend(["--baseline".into(), path(&base)]);
    let out = loadgen(args, &[("VECRIG_TOLERANCE", SHARED_MACHINE_TOLERANCES)]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(stdout.contains("no regression"), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "same build: {out:?}");
    server.stop().await.expect("clean stop");

    // A search 30 times as wide, one at a time: slower and less throughput.
    let server = crate::common::start_preloaded(DIMENSIONS, POINTS, |config| {
        config.ef_search = 2000;
        config.admission.concurrency_limit = 1;
    })
    .await;
    let mut args = run_args(&server.target(), &slow);
    args.extend(["--baseline".into(), path(&base)]);
    let out = loadgen(args, &[]).await;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        out.status.code(),
        Some(99),
        "slower server through --baseline"
    );
    server.stop().await.expect("clean stop");

    let (code, comparison, _) = compare(dir.path(), &[&base, &slow], &[]).await;
    assert_eq!(code, 99);
    let comparison = comparison.expect("--out written");
    assert_eq!(comparison.schema, vecrig_loadgen::compare::SCHEMA);
    assert!(
        judged(&comparison, "p50", Verdict::Worse),
        "{:?}",
        comparison.regressions
    );
    assert!(
        judged(&comparison, "goodput", Verdict::Worse),
        "{:?}",
        comparison.regressions
    );
    assert!(
        comparison.regressions.iter().any(|r| r.contains(" p50 ")),
        "named: {:?}",
        comparison.regressions
    );
    let html = std::fs::read_to_string(dir.path().join("comparison.html")).expect("--html");
    assert!(html.contains("<svg") && html.contains("worse") && !html.contains("<script"));

    // Two baselines: their spread is the noise; the slower server is still beyond it.
    let (code, comparison, _) = compare(dir.path(), &[&base, &same, &slow], &[]).await;
    assert_eq!(code, 99);
    let comparison = comparison.expect("--out written");
    assert_eq!(
        comparison.noise_model,
        "baseline range and statistical tests"
    );
    assert!(judged(&comparison, "p50", Verdict::Worse));
    // Several runs under test (--new, repeatable) are pooled: all the positional reports are
    // then baselines.
    let new = Path::new("--new");
    let (code, comparison, _) =
        compare(dir.path(), &[&base, &same, new, &slow, new, &slow], &[]).await;
    assert_eq!(code, 99);
    let comparison = comparison.expect("--out written");
    assert_eq!(comparison.baselines.len(), 2);
    assert!(comparison.new.contains(" + "), "{}", comparison.new);
    assert!(judged(&comparison, "p50", Verdict::Worse));
    // And the same build against both, at the shared machine's tolerances: no regression.
    let (code, _, _) = compare(
        dir.path(),
        &[&base, &same, &base],
        &[("VECRIG_TOLERANCE", SHARED_MACHINE_TOLERANCES)],
    )
    .await;
    assert_eq!(code, 0);
}

/// A light closed load of vector searches with a fifth of them checked for recall.
async fn recall_run(server: &TestServer) -> Report {
    let mut options = RunOptions::new(server.target());
    options.recall_sample = 0.2;
    let mut plan = Plan::new(vec![ScenarioSpec::Load(Load {
        model: LoadModel::Closed,
        start: 4.0,
        stages: vec![Stage {
            duration: Duration::from_secs(2),
            target: 4.0,
        }],
        max_in_flight: 100,
        think: Duration::from_millis(2),
    })]);
    plan.workload = Some(WorkloadKind::Vector);
    vecrig_loadgen::run(&options, &plan, &Stop::default())
        .await
        .expect("pre-flight")
}

fn save(dir: &Path, name: &str, report: &Report) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(report).expect("json")).expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_less_accurate_server_is_a_recall_regression() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = crate::common::start_preloaded(DIMENSIONS, POINTS, |_| {}).await;
    let base = save(dir.path(), "base.json", &recall_run(&server).await);
    server.stop().await.expect("clean stop");
    let server = crate::common::start_preloaded(DIMENSIONS, POINTS, |config| {
        config.ef_search = 1;
    })
    .await;
    let new = save(dir.path(), "ef1.json", &recall_run(&server).await);
    server.stop().await.expect("clean stop");

    let (code, comparison, _) = compare(dir.path(), &[&base, &new], &[]).await;
    assert_eq!(code, 99);
    let comparison = comparison.expect("--out written");
    assert!(
        judged(&comparison, "recall", Verdict::Worse),
        "{:?}",
        comparison.regressions
    );
    let change = comparison.scenarios[0].phases[0]
        .changes
        .iter()
        .find(|c| c.metric == "recall")
        .expect("recall compared");
    assert_eq!(change.noise.method, "recall z");
    assert!(change.noise.p_value.is_some_and(|p| p < 0.01), "{change:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomparable_reports_exit_1_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut config, temp) = TestServer::config(16);
    config.preload = 200;
    let server = TestServer::start_in(config, temp).await;
    let run = async |spec: ScenarioSpec| {
        vecrig_loadgen::run(
            &RunOptions::new(server.target()),
            &Plan::new(vec![spec]),
            &Stop::default(),
        )
        .await
        .expect("pre-flight")
    };
    let queries = |queries_per_user| {
        ScenarioSpec::ExtremeConcurrency(ExtremeConcurrency {
            users: 5,
            queries_per_user,
            think: Duration::ZERO,
        })
    };
    let two = run(queries(2)).await;
    let a = save(dir.path(), "two.json", &two);
    let b = save(dir.path(), "three.json", &run(queries(3)).await);
    let c = save(
        dir.path(),
        "load.json",
        &run(ScenarioSpec::Load(Load {
            model: LoadModel::Open,
            start: 50.0,
            stages: vec![Stage {
                duration: Duration::from_millis(300),
                target: 50.0,
            }],
            max_in_flight: 10,
            think: Duration::ZERO,
        }))
        .await,
    );
    let mut other = two.clone();
    other.schema = "vecrig.loadgen.report/v0".into();
    let d = save(dir.path(), "v0.json", &other);
    server.stop().await.expect("clean stop");

    // A report against itself compares, and nothing changed.
    let (code, comparison, _) = compare(dir.path(), &[&a, &a], &[]).await;
    assert_eq!(code, 0);
    assert!(comparison.is_some_and(|c| c.regressions.is_empty() && c.improvements.is_empty()));

    for (reports, reason) in [
        (vec![a.as_path(), c.as_path()], "different scenarios"),
        (
            vec![a.as_path(), b.as_path()],
            "different parameter queries_per_user",
        ),
        (
            vec![a.as_path(), d.as_path()],
            "schema \"vecrig.loadgen.report/v0\"",
        ),
    ] {
        let (code, comparison, stderr) = compare(dir.path(), &reports, &[]).await;
        assert_eq!(code, 1, "{reason}");
        assert!(comparison.is_none(), "{reason}: nothing written");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
    // A tolerance for a phase no report has is a typo, not a pass.
    let (code, _, stderr) = compare(
        dir.path(),
        &[&a, &a],
        &[("VECRIG_TOLERANCE", "p99+10%@no-such-phase")],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no-such-phase"), "{stderr}");
}
