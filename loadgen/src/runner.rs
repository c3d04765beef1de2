//! A run from start to end: pre-flight, build the scenarios against the target, run each,
//! measure the loadgen's own cost, and assemble the [`Report`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use prost_reflect::DynamicMessage;
use vecrig::client::{ConnectOptions, Metadata, request_with};
use vecrig::proto::{StatsRequest, StatsResponse};
use vecrig::validation::report::{Report, SCHEMA};

use crate::dynamic::describe::describe;
use crate::dynamic::{self, DynamicError, TargetSpec, Templates, Truth};
use crate::measure::process::Meter;
use crate::measure::recall::Recall;
use crate::plan::dataset::{Queries, Spec as DatasetSpec};
use crate::plan::file;
use crate::plan::scenario::Scenario;
use crate::plan::suite::Common;
use crate::plan::workload::{Op, Workload, WorkloadKind};
use crate::plan::{Plan, RunOptions};
use crate::report::progress::Progress;
use crate::scheduler::retry::RetryBudget;
use crate::scheduler::{self, Context, Senders, Stop};
use crate::target::{self, Checked, PreflightError};
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
    run_checked(options, plan.seed, stop, |stats| {
        let common = Common {
            dimensions: stats.dimensions as usize,
            seed: plan.seed,
            k: plan.k,
            workload: plan.workload.clone(),
            templates: None,
        };
        let (queries, truth) = on_vecrig(plan.dataset.as_ref(), &common)?;
        let scenarios = plan
            .scenarios
            .iter()
            .map(|spec| {
                let mut scenario = spec.build(&common);
                if !plan.default_thresholds {
                    scenario.thresholds.clear();
                }
                scenario.thresholds.extend(plan.thresholds.iter().cloned());
                scenario.workload = scenario.workload.with_queries(queries.clone());
                if let Some((index, count)) = plan.shard {
                    scenario.shard(index, count);
                }
                scenario
            })
            .collect();
        Ok((scenarios, truth))
    })
    .await
}

/// A dataset against a vecrig server (whose points it holds already, as
/// `vecrig-server --preload-from` loads them): checked against the server's dimensions, its
/// queries for the searches, its neighbours (if any) as recall's truth.
fn on_vecrig(
    dataset: Option<&DatasetSpec>,
    common: &Common,
) -> Result<(Option<Queries>, Option<Arc<Truth>>), PreflightError> {
    let Some(spec) = dataset else {
        return Ok((None, None));
    };
    let opened = spec.open_for(common.dimensions, None)?;
    Ok((
        spec.queries(&opened)?,
        Truth::answers_of(&opened, 0).map(Arc::new),
    ))
}

/// Runs the scenarios of a scenario file (see [`crate::plan::file`]): against a vecrig server, or
/// the templated target of its `[target]` table.
pub async fn run_file(
    options: &RunOptions,
    planned: &file::Planned,
    plan: &Plan,
    stop: &Stop,
) -> Result<Report, PreflightError> {
    if let Some(spec) = planned.target() {
        return run_templated(options, planned, spec, plan, stop).await;
    }
    let dataset = plan.dataset.clone().or_else(|| planned.dataset());
    run_checked(options, plan.seed, stop, |stats| {
        let dimensions = stats.dimensions as usize;
        let mut scenarios = planned.build(dimensions, plan.seed, plan.k);
        let common = Common {
            dimensions,
            seed: plan.seed,
            k: plan.k,
            workload: None,
            templates: None,
        };
        let (queries, truth) = on_vecrig(dataset.as_ref(), &common)?;
        finish_plan(&mut scenarios, plan, queries.as_ref());
        Ok((scenarios, truth))
    })
    .await
}

/// The run's own thresholds, shard and dataset queries on every scenario of a file.
fn finish_plan(scenarios: &mut [Scenario], plan: &Plan, queries: Option<&Queries>) {
    for scenario in scenarios {
        scenario.thresholds.extend(plan.thresholds.iter().cloned());
        scenario.workload = scenario.workload.with_queries(queries.cloned());
        if let Some((index, count)) = plan.shard {
            scenario.shard(index, count);
        }
    }
}

/// A run's connections before its scenarios: tonic's pool when it sends the load, the senders'
/// target when they do.
fn preflight_connect(options: &RunOptions) -> ConnectOptions {
    // With our own HTTP/2 client the senders open the load's connections; tonic's pool is then
    // only for what is off the hot path, and one connection is enough for it.
    match options.transport {
        Transport::H2 => ConnectOptions {
            connections: 1,
            ..options.connect.clone()
        },
        Transport::Tonic => options.connect.clone(),
    }
}

/// Runs a scenario file against its templated target: health, descriptors, templates checked,
/// one search (and the first ingest batch) sent as a probe, then the scenarios.
async fn run_templated(
    options: &RunOptions,
    planned: &file::Planned,
    spec: &TargetSpec,
    plan: &Plan,
    stop: &Stop,
) -> Result<Report, PreflightError> {
    // The dataset is checked against the target's shape before anything is sent.
    let dataset = match plan.dataset.clone().or_else(|| planned.dataset()) {
        Some(d) => {
            let opened = d.open_for(spec.dimensions, Some(spec.metric))?;
            let queries = d.queries(&opened)?;
            Some((opened, queries))
        }
        None => None,
    };
    let started_unix_ms = unix_ms();
    let meter = Meter::start();
    let headers: Metadata = options.headers.clone().into();
    let (pool, monitor) = target::connect_healthy(
        &options.target,
        &preflight_connect(options),
        options.wait_healthy,
    )
    .await?;
    let source = spec.source(planned.base());
    let descriptors = describe(&source, &monitor.channel(), &headers, &spec.services())
        .await
        .map_err(DynamicError::from)?;
    let templates = Arc::new(Templates::compile(spec, &descriptors)?);
    let (truth, queries) = match &dataset {
        Some((opened, queries)) => (planned.truth_of(opened)?, queries.clone()),
        None => (planned.truth(plan.seed), None),
    };
    for call in &templates.setup {
        call.make("setup", &monitor.channel(), &headers, plan.k, CALL_DEADLINE)
            .await?;
    }
    let mut warnings = Vec::new();
    // The probes: what the first user would send, once, before any load.
    let first_request = |kind| {
        Workload::on(
            kind,
            templates.dimensions,
            plan.seed,
            plan.k,
            Arc::clone(&templates),
        )
        .generator(0, 1)
        .next(0)
    };
    // An answer that fails its check is not a refusal: the run goes on and counts such
    // answers as failures (the report says why), but the user is told before the load.
    let failed_check =
        |what: &str, check: Option<&dynamic::AnswerCheck>, answer: &DynamicMessage| {
            let reason = check?
                .verdict(&prost::Message::encode_to_vec(answer))
                .err()?;
            Some(format!(
                "the probe {what}'s answer failed the target's answer check: {reason}"
            ))
        };
    if let Op::Call(call) = first_request(WorkloadKind::Vector) {
        let request = decoded(&templates.search, call.message())?;
        let answer =
            dynamic::probe(&monitor.channel(), &headers, &templates.search, request).await?;
        if let Some(answer) = answer {
            warnings.extend(failed_check(
                "search",
                templates.search_check.as_ref(),
                &answer,
            ));
        }
    }
    if let (Some(truth), Some(write)) = (&truth, &templates.write) {
        let first = first_request(WorkloadKind::Ingest {
            truth: Arc::clone(truth),
            writers: 1,
        });
        if let Op::Call(call) = first {
            let request = decoded(write, call.message())?;
            let answer = dynamic::probe(&monitor.channel(), &headers, write, request).await?;
            if let Some(answer) = answer {
                match failed_check("write", templates.write_check.as_ref(), &answer) {
                    Some(warning) => warnings.push(warning),
                    // The probe's batch is the ingest's first: it is not written again.
                    None => truth.acknowledge_probe(),
                }
            }
        }
    }
    let mut scenarios = planned.build_templated(plan.seed, plan.k, &templates, truth.as_ref());
    finish_plan(&mut scenarios, plan, queries.as_ref());
    let wire = Target::new(&options.target, &options.connect, &headers)?
        .with_methods(
            templates.search.path.as_str(),
            templates.write.as_ref().map(|w| w.path.as_str()),
        )
        .map_err(PreflightError::Unsupported)?;
    let recall = match &truth {
        Some(_) => Recall::new(options.recall_sample).with_truth(truth.clone()),
        None if options.recall_sample > 0.0 => {
            warnings.push(
                "recall not measured: a templated target's recall needs an ingest phase (the loadgen's own ground truth)"
                    .to_string(),
            );
            Recall::new(0.0)
        }
        None => Recall::new(0.0),
    };
    // A target that also answers vecrig's Stats (vecrig-server through templates) is sampled
    // as a run against vecrig without a [target] samples it; any other has no server figures.
    let stats = monitor
        .client()
        .stats(request_with(
            StatsRequest {},
            Duration::from_secs(5),
            &headers,
        ))
        .await
        .ok()
        .map(tonic::Response::into_inner);
    let server_stats = stats.is_some();
    let checked = Checked {
        pool,
        monitor,
        stats: stats.unwrap_or_default(),
    };
    let mut report = run_scenarios(
        options,
        (plan.seed, started_unix_ms, meter),
        stop,
        &checked,
        &scenarios,
        (
            Some((Arc::new(wire), options.connect.connections)),
            recall,
            server_stats,
        ),
    )
    .await?;
    for call in &templates.teardown {
        if let Err(e) = call
            .make(
                "teardown",
                &checked.monitor.channel(),
                &headers,
                plan.k,
                CALL_DEADLINE,
            )
            .await
        {
            warnings.push(e.to_string());
        }
    }
    report.warnings.extend(warnings);
    Ok(report)
}

/// How long a setup or teardown call may take (creating an index over a collection that
/// already holds data can take a while).
const CALL_DEADLINE: Duration = Duration::from_secs(120);

/// `run --check`: checks a scenario file as a run would before its load (the scenarios, the
/// templated target's descriptors, templates, answer checks and setup calls) without sending
/// a request but the reflection lookup where the descriptors come from the target. Returns a
/// summary of what a run would do.
pub async fn check_file(
    options: &RunOptions,
    planned: &file::Planned,
    plan: &Plan,
) -> Result<String, PreflightError> {
    let Some(spec) = planned.target() else {
        let scenarios = planned.build(1, plan.seed, plan.k);
        return Ok(format!(
            "the file checks out: {} scenarios against a vecrig server",
            scenarios.len()
        ));
    };
    let headers: Metadata = options.headers.clone().into();
    let source = spec.source(planned.base());
    let descriptors = match source {
        dynamic::Source::Reflection => {
            let (_, monitor) = target::connect_healthy(
                &options.target,
                &preflight_connect(options),
                options.wait_healthy,
            )
            .await?;
            describe(&source, &monitor.channel(), &headers, &spec.services()).await
        }
        // Files need no connection: a lazy channel that is never used.
        _ => {
            let channel =
                tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
            describe(&source, &channel, &headers, &spec.services()).await
        }
    }
    .map_err(DynamicError::from)?;
    let templates = Arc::new(Templates::compile(spec, &descriptors)?);
    let truth = match plan.dataset.clone().or_else(|| planned.dataset()) {
        Some(d) => planned.truth_of(&d.open_for(spec.dimensions, Some(spec.metric))?)?,
        None => planned.truth(plan.seed),
    };
    let scenarios = planned.build_templated(plan.seed, plan.k, &templates, truth.as_ref());
    let mut lines = vec![format!(
        "the file checks out: {} scenarios; {} dimensions",
        scenarios.len(),
        templates.dimensions
    )];
    let mut method =
        |what: &str, m: &dynamic::TemplatedMethod, check: Option<&dynamic::AnswerCheck>| {
            lines.push(format!(
                "  {what:<12} {}{}",
                m.descriptor.full_name(),
                if check.is_some() {
                    " (answer checked)"
                } else {
                    ""
                }
            ));
        };
    for call in &templates.setup {
        method("setup", &call.method, call.check.as_ref());
    }
    method("search", &templates.search, templates.search_check.as_ref());
    for (what, m) in [
        ("text_search", &templates.text_search),
        ("exact_search", &templates.exact_search),
    ] {
        if let Some(m) = m {
            method(what, m, templates.search_check.as_ref());
        }
    }
    if let Some(write) = &templates.write {
        method("write", write, templates.write_check.as_ref());
    }
    for call in &templates.teardown {
        method("teardown", &call.method, call.check.as_ref());
    }
    Ok(lines.join("\n"))
}

/// A request as the hot path encodes it, read back as `method`'s input: the probe sends what
/// the load will send.
fn decoded(
    method: &dynamic::TemplatedMethod,
    body: &[u8],
) -> Result<DynamicMessage, PreflightError> {
    DynamicMessage::decode(method.descriptor.input(), body).map_err(|e| {
        PreflightError::Unsupported(format!(
            "{}: an encoded request does not decode: {e}",
            method.descriptor.full_name()
        ))
    })
}

/// Runs scenarios built by `build` from the target's `Stats` (custom scenarios, e.g. in
/// tests); `seed` is recorded in the report.
pub async fn run_with(
    options: &RunOptions,
    seed: u64,
    stop: &Stop,
    build: impl FnOnce(&StatsResponse) -> Vec<Scenario>,
) -> Result<Report, PreflightError> {
    run_checked(options, seed, stop, |stats| Ok((build(stats), None))).await
}

/// As [`run_with`], `build` also giving recall's ground truth (a dataset's neighbours), and
/// able to refuse the run (a dataset that does not fit the target) before any load.
async fn run_checked(
    options: &RunOptions,
    seed: u64,
    stop: &Stop,
    build: impl FnOnce(&StatsResponse) -> Result<(Vec<Scenario>, Option<Arc<Truth>>), PreflightError>,
) -> Result<Report, PreflightError> {
    let started_unix_ms = unix_ms();
    let meter = Meter::start();
    let headers: Metadata = options.headers.clone().into();
    let checked = target::preflight(
        &options.target,
        &preflight_connect(options),
        &headers,
        options.wait_healthy,
    )
    .await?;
    let (planned, truth) = build(&checked.stats)?;
    let wire = match options.transport {
        Transport::H2 => {
            let target = Target::new(&options.target, &options.connect, &headers)?;
            Some((Arc::new(target), options.connect.connections))
        }
        Transport::Tonic => None,
    };
    let recall = Recall::new(options.recall_sample).with_truth(truth);
    run_scenarios(
        options,
        (seed, started_unix_ms, meter),
        stop,
        &checked,
        &planned,
        (wire, recall, true),
    )
    .await
}

/// The senders' own target and connections per sender (`None`: tonic's pool sends the load),
/// the recall sampling, and whether the target answers vecrig's `Stats`.
type Sending = (Option<(Arc<Target>, usize)>, Recall, bool);

/// Runs `planned` against a checked target and assembles the report; `started` is the seed,
/// when the run started, and the meter of its cost.
async fn run_scenarios(
    options: &RunOptions,
    started: (u64, u64, Meter),
    stop: &Stop,
    checked: &Checked,
    planned: &[Scenario],
    sending: Sending,
) -> Result<Report, PreflightError> {
    let (seed, started_unix_ms, meter) = started;
    let (wire, recall, server_stats) = sending;
    let headers: Metadata = options.headers.clone().into();
    let progress = Progress::new(options.live_progress);
    let ctx = Context {
        pool: checked.pool.clone(),
        timeout: options.timeout,
        headers: headers.clone(),
        retry: options.retry,
        budget: Arc::new(RetryBudget::new(options.retry.budget_ratio)),
        stop: stop.clone(),
        progress: progress.clone(),
        senders: Arc::new(Senders::start(options.threads, wire).map_err(PreflightError::Threads)?),
        abort_on_fail: options.abort_on_fail,
        metrics_url: options.metrics_url.as_deref().map(Arc::from),
        client: None,
        recall,
        server_stats,
        // Each phase sets its workload's; the scenarios of one run share one target.
        templates: crate::dynamic::Templates::vecrig_v1(),
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let mut scenarios = Vec::new();
    for scenario in planned {
        if stop.is_stopped() {
            break;
        }
        let scenario_meter = Meter::start();
        let mut report = scheduler::run_scenario(&ctx, scenario, checked.monitor.client()).await;
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
        server_log: options
            .server_log
            .as_ref()
            .map(|path| path.display().to_string()),
        scenarios,
        warnings: Vec::new(),
        passed,
    })
}
