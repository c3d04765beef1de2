//! How often the regression gate flags two runs of the same build: its false-alarm rate at
//! the default tolerances, with one stored baseline (the statistical tests) and with three
//! (the baselines' range).
//!
//! One `vecrig-server` (10,000 points x 128 dims, defaults), then `VECRIG_BENCH_RUNS` runs
//! (default 40) of the same load one after another: a closed load of 4 users, 1 ms think,
//! vector searches, `VECRIG_BENCH_SECONDS` each (default 2, as the integration tests' runs).
//! One baseline: runs 0 and 1, 2 and 3, ... compared as pairs. Three (five) baselines: every
//! run from the fourth (sixth) against the three (five) before it (windows overlap, so they
//! are not independent trials). Three (five) new runs (`compare --new`): windows of six (ten)
//! runs from every other run, the last three against the first three, and alternating (runs
//! 1, 3, 5 against 0, 2, 4). Prints how many were flagged and by which metrics, and how
//! far each metric moved between consecutive runs: the machine's own noise. The same runs
//! are judged again with their time slices taken out (the binomial intervals alone, as
//! reports without slices are judged), side by side. With
//! `VECRIG_TOLERANCE` set (as for `compare`), the same runs are also judged with those
//! tolerances over the defaults, side by side: how to choose them for a runner.
//!
//! Run: `cargo bench -p vecrig-loadgen --bench compare_false_alarms` (after
//! `cargo build --release --workspace --bins`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use vecrig::validation::report::Report;
use vecrig_loadgen::compare::{Named, Tolerance, Tolerances, Verdict, compare_runs};
use vecrig_loadgen::plan::scenario::Stage;
use vecrig_loadgen::plan::suite::{Load, LoadModel};
use vecrig_loadgen::plan::workload::WorkloadKind;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::target::LocalServer;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(target: &str, seconds: u64) -> Report {
    let mut plan = Plan::new(vec![ScenarioSpec::Load(Load {
        model: LoadModel::Closed,
        start: 4.0,
        stages: vec![Stage {
            duration: Duration::from_secs(seconds),
            target: 4.0,
        }],
        max_in_flight: 100,
        think: Duration::from_millis(1),
    })]);
    plan.workload = Some(WorkloadKind::Vector);
    vecrig_loadgen::run(&RunOptions::new(target), &plan, &Stop::default())
        .await
        .expect("pre-flight")
}

/// The metrics judged worse (and better) comparing the pooled `news` with `baselines`.
fn flagged(baselines: &[&Report], news: &[&Report], tolerances: &Tolerances) -> Vec<String> {
    fn named<'a>(name: &'a str, reports: &[&'a Report]) -> Vec<Named<'a>> {
        reports
            .iter()
            .map(|&report| Named { name, report })
            .collect()
    }
    let comparison = compare_runs(&named("base", baselines), &named("new", news), tolerances)
        .expect("comparable");
    comparison
        .scenarios
        .iter()
        .flat_map(|s| &s.phases)
        .flat_map(|p| &p.changes)
        .filter(|c| c.verdict != Verdict::Same)
        .map(|c| format!("{} {}", c.metric, c.verdict.name()))
        .collect()
}

fn summary(label: &str, trials: usize, results: &[Vec<String>]) {
    let worse = results
        .iter()
        .filter(|r| r.iter().any(|m| m.ends_with("worse")))
        .count();
    let any = results.iter().filter(|r| !r.is_empty()).count();
    let mut by_metric: BTreeMap<&str, usize> = BTreeMap::new();
    for m in results.iter().flatten() {
        *by_metric.entry(m.as_str()).or_default() += 1;
    }
    println!(
        "| {label} | {trials} | {worse} ({:.0}%) | {any} | {by_metric:?} |",
        100.0 * worse as f64 / trials.max(1) as f64
    );
}

/// One figure of a report.
type Figure = fn(&Report) -> f64;

/// How far each metric moved between consecutive runs of the same build: the machine's own
/// noise, which a tolerance must stand above.
fn spread(reports: &[Report]) {
    let metrics: [(&str, Figure); 5] = [
        ("p50", |r| r.scenarios[0].total.latency.p50_ms),
        ("p90", |r| r.scenarios[0].total.latency.p90_ms),
        ("p99", |r| r.scenarios[0].total.latency.p99_ms),
        ("p99.9", |r| r.scenarios[0].total.latency.p999_ms),
        ("goodput", |r| r.scenarios[0].total.qps),
    ];
    println!("\n| metric | median change between consecutive runs | 90th percentile |");
    println!("|---|---|---|");
    for (name, value) in metrics {
        let mut changes: Vec<f64> = reports
            .windows(2)
            .map(|w| ((value(&w[1]) - value(&w[0])) / value(&w[0])).abs() * 100.0)
            .collect();
        changes.sort_by(f64::total_cmp);
        let at = |q: f64| changes[((changes.len() - 1) as f64 * q).round() as usize];
        println!("| {name} | {:.1}% | {:.1}% |", at(0.5), at(0.9));
    }
}

/// Judges `reports` (runs of one build, in order) against each other every way the bench
/// measures, and prints how many were flagged.
fn judge_all(reports: &[Report], seconds: u64, label: &str, tolerances: &Tolerances) {
    let runs = reports.len();
    let pairs: Vec<Vec<String>> = reports
        .chunks_exact(2)
        .map(|pair| flagged(&[&pair[0]], &[&pair[1]], tolerances))
        .collect();
    let windows = |n: usize| -> Vec<Vec<String>> {
        (n..reports.len())
            .map(|i| {
                let base: Vec<&Report> = reports[i - n..i].iter().collect();
                flagged(&base, &[&reports[i]], tolerances)
            })
            .collect()
    };
    let (three, five) = (windows(3), windows(5));
    // `n` runs under test against `n` baselines, in windows of `2n` runs starting at every
    // other run (overlapping, so not independent trials): the `n` after the `n` (as a stored
    // baseline is used), or alternating with them (as when both builds run in one job).
    let groups = |n: usize, alternating: bool| -> Vec<Vec<String>> {
        (0..=reports.len().saturating_sub(2 * n))
            .step_by(2)
            .map(|start| {
                let window = &reports[start..start + 2 * n];
                let (base, new): (Vec<&Report>, Vec<&Report>) = if alternating {
                    (
                        window.iter().step_by(2).collect(),
                        window.iter().skip(1).step_by(2).collect(),
                    )
                } else {
                    (window[..n].iter().collect(), window[n..].iter().collect())
                };
                flagged(&base, &new, tolerances)
            })
            .collect()
    };
    println!("\n{runs} runs of {seconds} s, {label}\n");
    println!(
        "| baselines | comparisons | flagged worse (false alarms) | any change flagged | by metric |"
    );
    println!("|---|---|---|---|---|");
    summary("1 (statistical tests)", pairs.len(), &pairs);
    summary("3 (baseline range)", three.len(), &three);
    summary("5 (baseline range)", five.len(), &five);
    for n in [3, 5] {
        let after = groups(n, false);
        summary(
            &format!("{n}, against {n} new runs after them"),
            after.len(),
            &after,
        );
        let alternating = groups(n, true);
        summary(
            &format!("{n}, alternating with {n} new runs"),
            alternating.len(),
            &alternating,
        );
    }
}

fn main() {
    let runs = env("VECRIG_BENCH_RUNS", 40).max(4) as usize;
    let seconds = env("VECRIG_BENCH_SECONDS", 2).max(1);
    let binary = common::server_binary(Path::new(env!("CARGO_BIN_EXE_vecrig-loadgen")));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let server = LocalServer::spawn(&binary, 10_000, None, None, &[])
            .await
            .expect("start vecrig-server");
        let mut reports = Vec::new();
        for i in 0..runs {
            let report = run(&server.target, seconds).await;
            let p = &report.scenarios[0].total;
            eprintln!(
                "run {i}: {} requests, p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s",
                p.requests, p.latency.p50_ms, p.latency.p99_ms, p.qps
            );
            reports.push(report);
        }
        server.stop(Duration::from_secs(30)).await;

        // The same runs without their time slices, as reports before slices were judged:
        // the binomial intervals alone, side by side with the widened ones.
        let unsliced: Vec<Report> = reports
            .iter()
            .cloned()
            .map(|mut r| {
                for s in &mut r.scenarios {
                    for p in s.phases.iter_mut().chain(std::iter::once(&mut s.total)) {
                        p.histograms.slices.clear();
                    }
                }
                r
            })
            .collect();
        let mut sets = vec![
            (
                "default tolerances".to_string(),
                Tolerances::default(),
                &reports,
            ),
            (
                "default tolerances, without the runs' time slices".to_string(),
                Tolerances::default(),
                &unsliced,
            ),
        ];
        if let Ok(given) = std::env::var("VECRIG_TOLERANCE") {
            let parsed: Vec<Tolerance> = given
                .split(',')
                .map(|t| t.trim().parse().expect("VECRIG_TOLERANCE: a tolerance"))
                .collect();
            sets.push((
                format!("VECRIG_TOLERANCE={given}"),
                Tolerances::new(parsed),
                &reports,
            ));
        }
        for (label, tolerances, reports) in &sets {
            judge_all(reports, seconds, label, tolerances);
        }
        spread(&reports);
    });
}
