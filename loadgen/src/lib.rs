//! `vecrig-loadgen`: runs stress scenarios against a vecrig server over the network and
//! judges the result.
//!
//! A run goes: [`target::preflight`] (is the target there, healthy, and a vecrig server?) ->
//! [`scenario`] (what load: the specification's five scenarios) -> [`engine`] (how it is
//! scheduled and sent: closed or paced model, deadlines, retries under a budget) ->
//! [`stats`] (HdrHistograms and counts by gRPC code, per phase) -> a
//! [`vecrig::validation::report::Report`], judged by thresholds and printed by [`report`].
//! [`cli`] turns flags into a [`Plan`]; tests build a [`Plan`] directly.
//!
//! [`fault`] runs a paced load while a fault is injected from outside and judges what the
//! clients saw ([`acks`]: acknowledged writes, read back after); [`distributed`] finds a
//! replica's shard index among its peers (`docker compose up --scale loadgen=N`).

pub mod acks;
pub mod cli;
pub mod distributed;
pub mod engine;
pub mod fault;
pub mod file;
pub mod html;
pub mod merge;
pub mod monitor;
pub mod process;
pub mod progress;
pub mod report;
pub mod retry;
pub mod scenario;
pub mod scrape;
pub mod stats;
pub mod target;
pub mod workload;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use vecrig::client::{ConnectOptions, Metadata};
use vecrig::proto::StatsResponse;
use vecrig::validation::report::{Report, SCHEMA};
use vecrig::validation::threshold::Threshold;

use crate::engine::{Context, Scenario, Stop};
use crate::process::Meter;
use crate::progress::Progress;
use crate::retry::{RetryBudget, RetryPolicy};
use crate::scenario::{
    Common, ExtremeConcurrency, MemoryPressure, ResourceExhaustion, Scale, Sustained,
};
use crate::target::PreflightError;
use crate::workload::WorkloadKind;

/// One scenario to run, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioSpec {
    /// See [`ExtremeConcurrency`].
    ExtremeConcurrency(ExtremeConcurrency),
    /// See [`MemoryPressure`].
    MemoryPressure(MemoryPressure),
    /// See [`Sustained`].
    Sustained(Sustained),
    /// See [`ResourceExhaustion`].
    ResourceExhaustion(ResourceExhaustion),
    /// See [`Scale`].
    Scale(Scale),
    /// See [`scenario::Load`].
    Load(scenario::Load),
}

impl ScenarioSpec {
    fn build(&self, common: &Common) -> Scenario {
        match self {
            ScenarioSpec::ExtremeConcurrency(p) => p.build(common),
            ScenarioSpec::MemoryPressure(p) => p.build(common),
            ScenarioSpec::Sustained(p) => p.build(common),
            ScenarioSpec::ResourceExhaustion(p) => p.build(common),
            ScenarioSpec::Scale(p) => p.build(common),
            ScenarioSpec::Load(p) => p.build(common),
        }
    }

    /// The five scenarios of the specification, in its order, at a profile's sizes.
    pub fn suite(profile: scenario::Profile) -> Vec<ScenarioSpec> {
        let full = profile == scenario::Profile::Full;
        vec![
            ScenarioSpec::ExtremeConcurrency(if full {
                ExtremeConcurrency::full()
            } else {
                ExtremeConcurrency::quick()
            }),
            ScenarioSpec::MemoryPressure(if full {
                MemoryPressure::full()
            } else {
                MemoryPressure::quick()
            }),
            ScenarioSpec::Sustained(if full {
                Sustained::full()
            } else {
                Sustained::quick()
            }),
            ScenarioSpec::ResourceExhaustion(if full {
                ResourceExhaustion::full()
            } else {
                ResourceExhaustion::quick()
            }),
            ScenarioSpec::Scale(if full { Scale::full() } else { Scale::quick() }),
        ]
    }

    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            ScenarioSpec::ExtremeConcurrency(_) => "extreme-concurrency",
            ScenarioSpec::MemoryPressure(_) => "memory-pressure",
            ScenarioSpec::Sustained(_) => "sustained",
            ScenarioSpec::ResourceExhaustion(_) => "resource-exhaustion",
            ScenarioSpec::Scale(_) => "scale",
            ScenarioSpec::Load(_) => "load",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenarios, in order.
    pub scenarios: Vec<ScenarioSpec>,
    /// Seed of the request generators.
    pub seed: u64,
    /// Neighbours per search.
    pub k: u32,
    /// Replaces every scenario's own workload when set.
    pub workload: Option<WorkloadKind>,
    /// Thresholds added to every scenario.
    pub thresholds: Vec<Threshold>,
    /// Whether the specification's criteria apply (on by default).
    pub default_thresholds: bool,
    /// `(index, count)`: send only this shard's part of the load (a distributed run).
    pub shard: Option<(u64, u64)>,
}

impl Plan {
    /// A plan for `scenarios` with default seed, k and thresholds.
    pub fn new(scenarios: Vec<ScenarioSpec>) -> Self {
        Self {
            scenarios,
            seed: vecrig::synthetic::Synthetic::DEFAULT_SEED,
            k: 10,
            workload: None,
            thresholds: Vec::new(),
            default_thresholds: true,
            shard: None,
        }
    }
}

/// How to reach and talk to the target.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `http://host:port`.
    pub target: String,
    /// Connection pool settings.
    pub connect: ConnectOptions,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Metadata added to every request.
    pub headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// Retry rules.
    pub retry: RetryPolicy,
    /// Draw the live progress line (on a terminal).
    pub live_progress: bool,
    /// How long pre-flight waits for the target to become SERVING.
    pub wait_healthy: Duration,
    /// Abort the run on the first failed threshold, judging upper bounds mid-phase after
    /// this grace (see [`engine::Context::abort_on_fail`]).
    pub abort_on_fail: Option<Duration>,
    /// The server's Prometheus endpoint, scraped into each scenario's report when set.
    pub metrics_url: Option<String>,
}

impl RunOptions {
    /// Defaults for `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            connect: ConnectOptions::default(),
            timeout: Duration::from_secs(30),
            headers: Vec::new(),
            retry: RetryPolicy::default(),
            live_progress: false,
            wait_healthy: Duration::from_secs(60),
            abort_on_fail: None,
            metrics_url: None,
        }
    }
}

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

/// Runs the scenarios of a scenario file (see [`file`]).
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
    let checked = target::preflight(
        &options.target,
        &options.connect,
        &headers,
        options.wait_healthy,
    )
    .await?;
    let planned = build(&checked.stats);
    let progress = Progress::new(options.live_progress);
    let ctx = Context {
        pool: checked.pool.clone(),
        timeout: options.timeout,
        headers: headers.clone(),
        retry: options.retry,
        budget: Arc::new(RetryBudget::new(options.retry.budget_ratio)),
        stop: stop.clone(),
        progress: progress.clone(),
        abort_on_fail: options.abort_on_fail,
        metrics_url: options.metrics_url.as_deref().map(Arc::from),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_has_the_five_in_order_and_builds() {
        let common = Common {
            dimensions: 8,
            seed: 1,
            k: 10,
            workload: None,
        };
        for profile in [scenario::Profile::Quick, scenario::Profile::Full] {
            let suite = ScenarioSpec::suite(profile);
            let names: Vec<&str> = suite.iter().map(ScenarioSpec::name).collect();
            assert_eq!(
                names,
                [
                    "extreme-concurrency",
                    "memory-pressure",
                    "sustained",
                    "resource-exhaustion",
                    "scale"
                ]
            );
            for spec in &suite {
                let scenario = spec.build(&common);
                assert_eq!(scenario.name, spec.name());
                assert!(!scenario.thresholds.is_empty());
                assert!(!scenario.phases.is_empty());
            }
        }
    }
}
