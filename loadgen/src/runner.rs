//! A run from start to end: pre-flight, build the scenarios against the target, run each,
//! measure the loadgen's own cost, and assemble the [`Report`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vecrig::client::{ConnectOptions, Metadata};
use vecrig::proto::StatsResponse;
use vecrig::validation::report::{Report, SCHEMA};

use crate::engine::{self, Context, Lanes, Scenario, Stop};
use crate::file;
use crate::plan::{Plan, RunOptions};
use crate::process::Meter;
use crate::progress::Progress;
use crate::recall::Recall;
use crate::retry::RetryBudget;
use crate::scenario::Common;
use crate::target::{self, PreflightError};
use crate::wire::{Target, Transport};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The share of the machine's CPU above which the loadgen may itself be the bottleneck.
const SATURATION: f64 = 0.8;

/// Runs `plan` against the target; `stop` ends it early (what ran is still reported).
pub async fn run(options: &RunOptions, plan: &Plan, stop: &Stop) -> Result<Report, PreflightError> {
    run_with(options, plan.seed, stop, |stats| {
        let common = Common {
            dimensions: stats.dimensions as usize,
            seed: plan.seed,
            k: plan.k,
            workload: plan.workload.clone(),
        };
        plan.scenarios
            .iter()
            .map(|spec| {
                let mut scenario = spec.build(&common);
                if !plan.default_thresholds {
                    scenario.thresholds.clear();
                }
                scenario.thresholds.extend(plan.thresholds.iter().cloned());
                if let Some((index, count)) = plan.shard {
                    scenario.shard(index, count);
                }
                scenario
            })
            .collect()
    })
    .await
}

/// Runs the scenarios of a scenario file (see [`crate::file`]).
pub async fn run_file(
    options: &RunOptions,
    planned: &file::Planned,
    plan: &Plan,
    stop: &Stop,
) -> Result<Report, PreflightError> {
    run_with(options, plan.seed, stop, |stats| {
        let mut scenarios = planned.build(stats.dimensions as usize, plan.seed, plan.k);
        for scenario in &mut scenarios {
            scenario.thresholds.extend(plan.thresholds.iter().cloned());
            if let Some((index, count)) = plan.shard {
                scenario.shard(index, count);
            }
        }
        scenarios
    })
    .await
}

/// Runs scenarios built by `build` from the target's `Stats` (custom scenarios, e.g. in
/// tests); `seed` is recorded in the report.
pub async fn run_with(
    options: &RunOptions,
    seed: u64,
    stop: &Stop,
    build: impl FnOnce(&StatsResponse) -> Vec<Scenario>,
) -> Result<Report, PreflightError> {
    let started_unix_ms = unix_ms();
    let meter = Meter::start();
    let headers: Metadata = options.headers.clone().into();
    // With our own HTTP/2 client the lanes open the load's connections; tonic's pool is then
    // only for what is off the hot path, and one connection is enough for it.
    let preflight_connect = match options.transport {
        Transport::H2 => ConnectOptions {
            connections: 1,
            ..options.connect.clone()
        },
        Transport::Tonic => options.connect.clone(),
    };
    let checked = target::preflight(
        &options.target,
        &preflight_connect,
        &headers,
        options.wait_healthy,
    )
    .await?;
    let planned = build(&checked.stats);
    let progress = Progress::new(options.live_progress);
    let wire = match options.transport {
        Transport::H2 => {
            let target = Target::new(&options.target, &options.connect, &headers)?;
            Some((Arc::new(target), options.connect.connections))
        }
        Transport::Tonic => None,
    };
    let ctx = Context {
        pool: checked.pool.clone(),
        timeout: options.timeout,
        headers: headers.clone(),
        retry: options.retry,
        budget: Arc::new(RetryBudget::new(options.retry.budget_ratio)),
        stop: stop.clone(),
        progress: progress.clone(),
        lanes: Arc::new(Lanes::start(options.threads, wire).map_err(PreflightError::Threads)?),
        abort_on_fail: options.abort_on_fail,
        metrics_url: options.metrics_url.as_deref().map(Arc::from),
        client: None,
        recall: Recall::new(options.recall_sample),
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let mut scenarios = Vec::new();
    for scenario in &planned {
        if stop.is_stopped() {
            break;
        }
        let scenario_meter = Meter::start();
        let mut report = engine::run_scenario(&ctx, scenario, checked.monitor.client()).await;
        report.loadgen = scenario_meter.finish();
        if report.loadgen.cpu_cores_used >= SATURATION * cpus {
            report.warnings.push(format!(
                "the loadgen process used {:.2} of {cpus} cores: it (or a server running inside it) may have been the bottleneck",
                report.loadgen.cpu_cores_used
            ));
        }
        if report.total.requests == 0 && !stop.is_stopped() {
            report.warnings.push("no request completed".into());
        }
        if options.abort_on_fail.is_some() && !report.passed {
            // Thresholds on the totals are only known now; the scenarios after it do not run.
            stop.abort(format!("{}: failed its thresholds", report.name));
        }
        scenarios.push(report);
    }
    progress.finish();
    let aborted = stop.abort_reason();
    let interrupted = stop.is_stopped() && aborted.is_none();
    let passed = aborted.is_none() && !scenarios.is_empty() && scenarios.iter().all(|s| s.passed);
    Ok(Report {
        schema: SCHEMA.to_string(),
        loadgen_version: env!("CARGO_PKG_VERSION").to_string(),
        target: options.target.clone(),
        seed,
        started_unix_ms,
        finished_unix_ms: unix_ms(),
        interrupted,
        aborted,
        loadgen: meter.finish(),
        scenarios,
        warnings: Vec::new(),
        passed,
    })
}
