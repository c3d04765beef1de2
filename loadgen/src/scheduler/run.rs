//! Running a scenario: its phases in order, each phase's load by its model, the monitor
//! line, the abort watch, and the scenario's report and verdict at the end.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vecrig::proto::vector_index_client::VectorIndexClient;
use vecrig::validation::criteria;
use vecrig::validation::report::{RecallFigures, ScenarioReport, ServerPoint};
use vecrig::validation::threshold;

use super::context::Context;
use super::judge::{AbortWatch, failed_at_phase_end};
use super::open::Arrivals;
use super::paced::Pacing;
use super::senders::Sender;
use super::{closed, open, paced, ramping};
use crate::measure::monitor::Monitor;
use crate::measure::outcomes::Outcomes;
use crate::measure::recall::RecallSample;
use crate::measure::recorder::PhaseRecorder;
use crate::measure::timeline::Timeline;
use crate::plan::scenario::{Model, Phase, Scenario};
use crate::plan::workload::Workload;
use crate::report::progress::Progress;

/// Runs one scenario to the end (or until stopped) and judges it.
pub async fn run_scenario(
    ctx: &Context,
    scenario: &Scenario,
    stats_client: VectorIndexClient<Channel>,
) -> ScenarioReport {
    let ctx = &Context {
        timeout: scenario.timeout.unwrap_or(ctx.timeout),
        ..ctx.clone()
    };
    // Exact answers for the recall check go over the same connection as `Stats`.
    let exact_client = stats_client.clone();
    let monitor = if ctx.server_stats {
        Monitor::start(
            stats_client,
            Arc::clone(&ctx.headers),
            Duration::from_secs(1),
        )
    } else {
        Monitor::off(Arc::clone(&ctx.headers))
    };
    let started = Instant::now();
    let timeline = Arc::new(Timeline::new());
    let mut phases = Vec::new();
    let mut total = Outcomes::default();
    let mut abort_failures = Vec::new();
    // Time spent asking exact answers after phases: outside the measured window, so left
    // out of the scenario's duration (and so of its total throughput).
    let mut checking = Duration::ZERO;
    let mut warnings = Vec::new();
    if !scenario.identities.is_empty() {
        let started = Instant::now();
        monitor.set_phase(0);
        monitor.sample_now().await;
        ctx.progress.set_label(scenario.name.clone());
        let (recorders, side_warnings) = run_side_by_side(ctx, scenario, &timeline).await;
        warnings = side_warnings;
        monitor.sample_now().await;
        let elapsed = started.elapsed();
        for (phase, (recorder, samples)) in scenario.phases.iter().zip(recorders) {
            let mut outcomes = recorder.snapshot();
            let check = Instant::now();
            outcomes.recall = check_recall(ctx, samples, &exact_client).await;
            checking += check.elapsed();
            total.merge(&outcomes);
            let mut report = outcomes.report(
                &phase.name,
                phase.model.concurrency(),
                elapsed,
                monitor.figures(None),
            );
            report.histograms.slices = recorder.slices();
            if let Some(failure) = ctx
                .abort_on_fail
                .and_then(|_| failed_at_phase_end(&scenario.thresholds, &report))
            {
                ctx.stop.abort(format!(
                    "{}: {} failed in {} (observed {})",
                    scenario.name, failure.expression, failure.scope, failure.observed
                ));
                abort_failures.push(failure);
            }
            phases.push(report);
        }
    }
    for (index, phase) in scenario.phases.iter().enumerate() {
        if ctx.stop.is_stopped() || !scenario.identities.is_empty() {
            break;
        }
        monitor.set_phase(index);
        monitor.sample_now().await;
        ctx.progress
            .set_label(format!("{} / {}", scenario.name, phase.name));
        let recorder = Arc::new(PhaseRecorder::with_timeline(Arc::clone(&timeline)));
        // The server's counters before and after, for what it counted in this phase alone.
        let counters_before = match &ctx.metrics_url {
            Some(url) => crate::measure::scrape::scrape(url).await.ok(),
            None => None,
        };
        let phase_started = Instant::now();
        let ticker = scenario.monitor_every.map(|every| {
            let (recorder, progress, label) = (
                Arc::clone(&recorder),
                ctx.progress.clone(),
                format!("{}/{}", scenario.name, phase.name),
            );
            tokio::spawn(async move { report_every(every, &recorder, &progress, &label).await })
        });
        let watchdog = ctx.abort_on_fail.map(|grace| {
            let watch = AbortWatch {
                scenario: scenario.name.clone(),
                phase: phase.name.clone(),
                concurrency: phase.model.concurrency(),
                thresholds: scenario.thresholds.clone(),
                total_before: total.clone(),
                recorder: Arc::clone(&recorder),
                stop: ctx.stop.clone(),
            };
            tokio::spawn(watch.run(grace, phase_started))
        });
        let samples = run_phase(ctx, phase, &scenario.workload, &recorder).await;
        let elapsed = phase_started.elapsed();
        if let Some(t) = ticker {
            t.abort();
        }
        let mid_run_failure = match watchdog {
            Some(task) => {
                task.abort();
                task.await.ok().flatten()
            }
            None => None,
        };
        monitor.sample_now().await;
        let counters_after = match (&ctx.metrics_url, &counters_before) {
            (Some(url), Some(_)) => crate::measure::scrape::scrape(url).await.ok(),
            _ => None,
        };
        let mut outcomes = recorder.snapshot();
        let check = Instant::now();
        outcomes.recall = check_recall(ctx, samples, &exact_client).await;
        checking += check.elapsed();
        total.merge(&outcomes);
        let mut report = outcomes.report(
            &phase.name,
            phase.model.concurrency(),
            elapsed,
            monitor.figures(Some(index)),
        );
        report.histograms.slices = recorder.slices();
        if let (Some(before), Some(after)) = (&counters_before, &counters_after) {
            report.server_counts = crate::measure::scrape::counted_between(before, after);
        }
        if let Model::Ingest { writes, .. } = &phase.model {
            report.written = writes.0.ingest_truth().map(|truth| truth.held() as u64);
        }
        let failure = mid_run_failure.or_else(|| {
            ctx.abort_on_fail?;
            failed_at_phase_end(&scenario.thresholds, &report)
        });
        phases.push(report);
        if let Some(failure) = failure {
            ctx.stop.abort(format!(
                "{}: {} failed in {} (observed {})",
                scenario.name, failure.expression, failure.scope, failure.observed
            ));
            abort_failures.push(failure);
        }
    }
    let duration = started.elapsed().saturating_sub(checking);
    let peak = if scenario.identities.is_empty() {
        scenario
            .phases
            .iter()
            .map(|p| p.model.concurrency())
            .max()
            .unwrap_or(0)
    } else {
        // Side by side, the phases' users add up.
        scenario.phases.iter().map(|p| p.model.concurrency()).sum()
    };
    let mut report = ScenarioReport {
        server_metrics: Default::default(),
        name: scenario.name.clone(),
        description: scenario.description.clone(),
        parameters: scenario.parameters.clone(),
        duration_s: duration.as_secs_f64(),
        total: {
            let mut total = total.report("total", peak, duration, monitor.figures(None));
            // The phases' slices one after another (side by side, phase by phase): each
            // slice is a stretch of the scenario's requests, which is all the noise needs.
            total.histograms.slices = phases
                .iter()
                .flat_map(|p| p.histograms.slices.iter().cloned())
                .collect();
            total
        },
        phases,
        server: monitor.figures(None),
        thresholds: Vec::new(),
        loadgen: Default::default(),
        warnings,
        passed: false,
        timeline: timeline.points(),
        fine_timeline: if duration < crate::measure::timeline::FINE_SPAN {
            timeline.fine_points()
        } else {
            Vec::new()
        },
        server_timeline: monitor
            .samples()
            .into_iter()
            .map(|s| ServerPoint {
                t_s: s.at_s,
                in_flight: s.in_flight,
                queued: s.queued,
                shed_total: s.shed_total,
                rss_bytes: s.rss_bytes,
                uptime_ms: s.uptime_ms,
            })
            .collect(),
        fault: None,
    };
    if let Some(url) = &ctx.metrics_url {
        match crate::measure::scrape::scrape(url).await {
            Ok(samples) => report.server_metrics = samples,
            Err(e) => report
                .warnings
                .push(format!("cannot scrape server metrics: {e}")),
        }
    }
    threshold::judge(&mut report, &scenario.thresholds);
    if !abort_failures.is_empty() {
        // The failure that aborted the run stays in the verdict even if the figure it was
        // judged on recovered by the end of the phase.
        report.passed = false;
        report.thresholds.extend(abort_failures);
    }
    if scenario.check_recovery
        && let Some(recovered) = criteria::recovery(&report)
    {
        report.passed &= recovered.passed;
        report.thresholds.push(recovered);
    }
    for violation in criteria::graceful_violations(&report) {
        report.warnings.push(format!("not graceful: {violation}"));
    }
    report
}

/// The specification's monitor: every `every`, recent throughput and the error rate so far.
async fn report_every(every: Duration, recorder: &PhaseRecorder, progress: &Progress, label: &str) {
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(every).await;
        let o = recorder.snapshot();
        let (requests, successes) = (o.requests(), o.successes());
        let recent = (successes - last.0) as f64 / last.1.elapsed().as_secs_f64();
        let error_rate = if requests == 0 {
            0.0
        } else {
            1.0 - successes as f64 / requests as f64
        };
        progress.println(format!(
            "[{label} {:>4.0}s] {recent:.1} QPS, {:.2}% errors, p99 {:.1} ms",
            started.elapsed().as_secs_f64(),
            error_rate * 100.0,
            o.latency.value_at_quantile(0.99) as f64 / 1000.0
        ));
        last = (successes, Instant::now());
    }
}

/// Runs every phase of `scenario` at once, phase `i` as client `scenario.identities[i]`
/// (its own source address and token, on connections of its own on every sender), each into
/// a recorder of its own. Returns the recorders and sampled searches, in phase order, and what the reader should
/// know (a client that could not be set up is sent as the run's own).
async fn run_side_by_side(
    ctx: &Context,
    scenario: &Scenario,
    timeline: &Arc<Timeline>,
) -> (Vec<(Arc<PhaseRecorder>, Vec<RecallSample>)>, Vec<String>) {
    let mut warnings = Vec::new();
    if scenario.identities.windows(2).all(|w| w[0] == w[1]) {
        warnings.push(
            "the side-by-side clients are one client to the server: give each its own source \
             address (127.0.0.2 against a loopback target) or token"
                .to_string(),
        );
    }
    let mut running = Vec::new();
    let mut recorders = Vec::new();
    for (phase, identity) in scenario.phases.iter().zip(&scenario.identities) {
        let mut client = ctx.clone();
        if let Some(token) = &identity.token {
            match bearer(&ctx.headers, token) {
                Ok(headers) => client.headers = headers,
                Err(e) => warnings.push(format!("{}: token not sent: {e}", phase.name)),
            }
        }
        match ctx.senders.target() {
            Some(target) => match target.as_client(identity.bind, &client.headers) {
                Ok(target) => client.client = Some(Arc::new(target)),
                Err(e) => warnings.push(format!("{}: sent as the run's client: {e}", phase.name)),
            },
            None if identity.bind.is_some() => warnings.push(format!(
                "{}: --transport tonic cannot choose a source address: sent from the system's",
                phase.name
            )),
            None => {}
        }
        let recorder = Arc::new(PhaseRecorder::with_timeline(Arc::clone(timeline)));
        let (phase, workload) = (phase.clone(), Arc::clone(&scenario.workload));
        let record = Arc::clone(&recorder);
        running.push(tokio::spawn(async move {
            run_phase(&client, &phase, &workload, &record).await
        }));
        recorders.push(recorder);
    }
    let mut done = Vec::with_capacity(recorders.len());
    for (phase, recorder) in running.into_iter().zip(recorders) {
        // An error means the phase's task panicked: its recorder holds what it sent.
        done.push((recorder, phase.await.unwrap_or_default()));
    }
    (done, warnings)
}

/// The run's metadata with `authorization: Bearer token` in place of its own.
fn bearer(
    headers: &vecrig::client::Metadata,
    token: &str,
) -> Result<vecrig::client::Metadata, String> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "not a valid header value".to_string())?;
    let key: tonic::metadata::AsciiMetadataKey =
        "authorization".parse().map_err(|_| "key".to_string())?;
    let mut all: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .cloned()
        .collect();
    all.push((key, value));
    Ok(all.into())
}

/// Runs one phase on every sender, each sender its share of the load, and waits until all are
/// done and have handed their records to `recorder`.
/// Returns the searches it sampled for recall.
async fn run_phase(
    ctx: &Context,
    phase: &Phase,
    workload: &Arc<Workload>,
    recorder: &Arc<PhaseRecorder>,
) -> Vec<RecallSample> {
    // One start for all senders, so their schedules line up.
    let (model, start) = (phase.model.clone(), Instant::now());
    let shared = Context {
        recall: ctx.recall.for_phase(),
        templates: Arc::clone(workload.templates()),
        ..ctx.clone()
    };
    let recall = shared.recall.clone();
    let (workload, recorder) = (Arc::clone(workload), Arc::clone(recorder));
    ctx.senders
        .run(move |sender| {
            let (ctx, model) = (shared.clone(), model.clone());
            let (workload, recorder) = (Arc::clone(&workload), Arc::clone(&recorder));
            async move {
                let _flush = sender.flush_every_second(&recorder, &ctx.progress);
                run_lane(&ctx, &sender, &model, start, &workload, &recorder).await;
            }
        })
        .await;
    recall.take_samples()
}

/// Checks a phase's sampled searches against the target's exact answers, after the phase.
async fn check_recall(
    ctx: &Context,
    samples: Vec<RecallSample>,
    client: &VectorIndexClient<Channel>,
) -> Option<RecallFigures> {
    ctx.recall
        .check(samples, client.clone(), &ctx.headers, ctx.timeout, || {
            ctx.stop.is_stopped()
        })
        .await
}

/// One sender's share of a phase, by the phase's model.
async fn run_lane(
    ctx: &Context,
    sender: &Rc<Sender>,
    model: &Model,
    start: Instant,
    workload: &Arc<Workload>,
    recorder: &Arc<PhaseRecorder>,
) {
    match *model {
        Model::Closed {
            users,
            iterations,
            duration,
            think,
            stagger,
        } => {
            let users = closed::Users {
                users,
                iterations,
                duration,
                think,
                stagger,
            };
            closed::run(ctx, sender, users, start, workload, recorder).await
        }
        Model::Paced {
            workers,
            rate,
            duration,
        } => {
            let pacing = Pacing {
                workers,
                rate,
                duration,
            };
            paced::run(ctx, sender, pacing, start, workload, recorder).await
        }
        Model::Ramping {
            from,
            to,
            duration,
            think,
        } => {
            let span = (start, duration);
            ramping::run(ctx, sender, (from, to), span, think, workload, recorder).await
        }
        Model::Open {
            from,
            to,
            duration,
            max_in_flight,
        } => {
            let arrivals = Arrivals { from, to, duration };
            let bound = (start, max_in_flight);
            open::run(ctx, sender, arrivals, bound, workload, recorder).await
        }
        Model::Ingest {
            writers,
            ref writes,
        } => {
            // Closed users with no end but the data set's: each stops at its `Op::Done`.
            let users = closed::Users {
                users: writers,
                iterations: None,
                duration: None,
                think: Duration::ZERO,
                stagger: None,
            };
            closed::run(ctx, sender, users, start, &writes.0, recorder).await
        }
    }
}
