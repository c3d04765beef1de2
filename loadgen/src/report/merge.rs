//! Merging the reports of a distributed run: N loadgens (`--shard I/N`) each ran their share
//! of the same plan against the same target; their JSON reports combine into one, losslessly.
//!
//! Counts add up. Latency histograms are merged as histograms (percentiles are recomputed from
//! the merged data, never averaged). Phases ran at the same time, so a phase's duration is the
//! longest shard's and its QPS is all successes over it. Server figures come from the same
//! server seen by every shard, so they are not added: the largest is kept. Thresholds are
//! evaluated again on the merged result.

use std::collections::BTreeMap;

use vecrig::validation::criteria;
use vecrig::validation::report::{
    PhaseReport, ProcessFigures, Report, SCHEMA, ScenarioReport, ServerFigures,
};
use vecrig::validation::threshold::{self, Threshold};

use crate::measure::outcomes::Outcomes;

/// Why reports cannot be merged.
#[derive(Debug, thiserror::Error)]
#[error("cannot merge: {0}")]
pub struct MergeError(String);

fn max_server(a: &ServerFigures, b: &ServerFigures) -> ServerFigures {
    ServerFigures {
        samples: a.samples.max(b.samples),
        shed: a.shed.max(b.shed),
        max_queued: a.max_queued.max(b.max_queued),
        max_in_flight: a.max_in_flight.max(b.max_in_flight),
        rss_start_bytes: match (a.rss_start_bytes, b.rss_start_bytes) {
            (0, x) | (x, 0) => x,
            (x, y) => x.min(y),
        },
        rss_max_bytes: a.rss_max_bytes.max(b.rss_max_bytes),
        rss_end_bytes: a.rss_end_bytes.max(b.rss_end_bytes),
        points_start: a.points_start.min(b.points_start),
        points_end: a.points_end.max(b.points_end),
        min_search_breadth: match (a.min_search_breadth, b.min_search_breadth) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        },
    }
}

/// Several loadgen processes together: CPU adds up, memory is the largest one's.
fn sum_processes<'a>(figures: impl Iterator<Item = &'a ProcessFigures>) -> ProcessFigures {
    let mut sum = ProcessFigures::default();
    for f in figures {
        sum.cpu_seconds += f.cpu_seconds;
        sum.cpu_cores_used += f.cpu_cores_used;
        sum.rss_bytes = sum.rss_bytes.max(f.rss_bytes);
        sum.max_rss_bytes = sum.max_rss_bytes.max(f.max_rss_bytes);
    }
    sum
}

fn merge_phases(phases: &[&PhaseReport]) -> Result<PhaseReport, MergeError> {
    let mut outcomes = Outcomes::default();
    let mut duration = 0.0f64;
    let mut concurrency = 0;
    let mut server = ServerFigures::default();
    for (i, phase) in phases.iter().enumerate() {
        outcomes.merge(&Outcomes::from_report(phase).map_err(MergeError)?);
        duration = duration.max(phase.duration_s);
        concurrency += phase.concurrency;
        server = if i == 0 {
            phase.server.clone()
        } else {
            max_server(&server, &phase.server)
        };
    }
    let mut merged = outcomes.report(
        &phases[0].name,
        concurrency,
        std::time::Duration::from_secs_f64(duration),
        server,
    );
    // Each shard's slices are stretches of its own requests: side by side, they are all
    // stretches of the merged phase.
    merged.histograms.slices = phases
        .iter()
        .flat_map(|p| p.histograms.slices.iter().cloned())
        .collect();
    // Every shard scraped the same server, so each saw (nearly) the same counts: the largest,
    // not the sum, as for the other server figures.
    for phase in phases {
        for (series, &counted) in &phase.server_counts {
            let entry = merged.server_counts.entry(series.clone()).or_insert(0.0);
            *entry = entry.max(counted);
        }
    }
    Ok(merged)
}

fn merge_scenarios(shards: &[&ScenarioReport]) -> Result<ScenarioReport, MergeError> {
    let first = shards[0];
    let mut phases = Vec::new();
    for (j, phase) in first.phases.iter().enumerate() {
        let same: Vec<&PhaseReport> = shards
            .iter()
            .map(|s| {
                s.phases
                    .get(j)
                    .filter(|p| p.name == phase.name)
                    .ok_or_else(|| {
                        MergeError(format!(
                            "scenario {}: the shards' phases differ ({} missing)",
                            first.name, phase.name
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        phases.push(merge_phases(&same)?);
    }
    let totals: Vec<&PhaseReport> = shards.iter().map(|s| &s.total).collect();
    let mut total = merge_phases(&totals)?;
    total.name = "total".into();
    let loadgen = sum_processes(shards.iter().map(|s| &s.loadgen));
    let mut parameters: BTreeMap<String, String> = first.parameters.clone();
    parameters.insert("shard".into(), format!("merged from {}", shards.len()));
    let mut merged = ScenarioReport {
        server_metrics: Default::default(),
        name: first.name.clone(),
        description: first.description.clone(),
        parameters,
        duration_s: shards.iter().map(|s| s.duration_s).fold(0.0, f64::max),
        server: total.server.clone(),
        phases,
        total,
        thresholds: Vec::new(),
        loadgen,
        warnings: Vec::new(),
        passed: false,
        timeline: merge_timelines(shards, |s| &s.timeline),
        fine_timeline: merge_timelines(shards, |s| &s.fine_timeline),
        server_timeline: first.server_timeline.clone(),
        fault: None,
    };
    // Re-judge with the same expressions; the recovery check is recomputed by its own rule.
    let mut expressions: Vec<Threshold> = Vec::new();
    let mut recovery = false;
    for t in &first.thresholds {
        match t.expression.parse::<Threshold>() {
            Ok(parsed)
                if !expressions
                    .iter()
                    .any(|e| e.expression == parsed.expression) =>
            {
                expressions.push(parsed)
            }
            Ok(_) => {}
            Err(_) if t.expression.starts_with("recovered") => recovery = true,
            Err(_) => {}
        }
    }
    threshold::judge(&mut merged, &expressions);
    if recovery && let Some(r) = criteria::recovery(&merged) {
        merged.passed &= r.passed;
        merged.thresholds.push(r);
    }
    // A fault run's verdict is judged again on the merged timeline, its read-back checks added
    // up (its check expressions are not thresholds, so the loop above skipped them).
    let verdicts: Vec<_> = shards.iter().filter_map(|s| s.fault.as_ref()).collect();
    if let Some((verdict, checks)) = vecrig::validation::fault::merge(&merged, &verdicts) {
        merged.passed &= checks.iter().all(|c| c.passed);
        merged.thresholds.extend(checks);
        merged.fault = Some(verdict);
    }
    for violation in criteria::graceful_violations(&merged) {
        merged.warnings.push(format!("not graceful: {violation}"));
    }
    Ok(merged)
}

/// Adds the shards' seconds together. Their percentiles cannot be merged without their
/// histograms, so a merged second keeps the worst shard's: an upper bound, said so in the chart.
fn merge_timelines(
    shards: &[&ScenarioReport],
    timeline: fn(&ScenarioReport) -> &Vec<vecrig::validation::report::TimePoint>,
) -> Vec<vecrig::validation::report::TimePoint> {
    let mut merged: Vec<vecrig::validation::report::TimePoint> = Vec::new();
    for shard in shards {
        for (i, point) in timeline(shard).iter().enumerate() {
            if merged.len() <= i {
                merged.push(point.clone());
                continue;
            }
            let m = &mut merged[i];
            m.requests += point.requests;
            m.successes += point.successes;
            for (code, n) in &point.errors {
                *m.errors.entry(code.clone()).or_default() += n;
            }
            m.p50_ms = m.p50_ms.max(point.p50_ms);
            m.p99_ms = m.p99_ms.max(point.p99_ms);
            m.max_ms = m.max_ms.max(point.max_ms);
        }
    }
    merged
}

/// Merges the reports of the shards of one distributed run.
pub fn merge(reports: &[Report]) -> Result<Report, MergeError> {
    let first = reports
        .first()
        .ok_or_else(|| MergeError("no reports given".into()))?;
    for r in reports {
        if r.schema != SCHEMA {
            return Err(MergeError(format!(
                "a report has schema {:?}, expected {SCHEMA:?}",
                r.schema
            )));
        }
        let names = |r: &Report| {
            r.scenarios
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };
        if names(r) != names(first) {
            return Err(MergeError(format!(
                "the reports ran different scenarios: {:?} and {:?}",
                names(first),
                names(r)
            )));
        }
    }
    let mut scenarios = Vec::new();
    for (i, _) in first.scenarios.iter().enumerate() {
        let shards: Vec<&ScenarioReport> = reports.iter().map(|r| &r.scenarios[i]).collect();
        scenarios.push(merge_scenarios(&shards)?);
    }
    let loadgen = sum_processes(reports.iter().map(|r| &r.loadgen));
    let passed = !scenarios.is_empty() && scenarios.iter().all(|s| s.passed);
    Ok(Report {
        schema: SCHEMA.to_string(),
        loadgen_version: first.loadgen_version.clone(),
        target: first.target.clone(),
        seed: first.seed,
        started_unix_ms: reports.iter().map(|r| r.started_unix_ms).min().unwrap_or(0),
        finished_unix_ms: reports
            .iter()
            .map(|r| r.finished_unix_ms)
            .max()
            .unwrap_or(0),
        interrupted: reports.iter().any(|r| r.interrupted),
        aborted: reports.iter().find_map(|r| r.aborted.clone()),
        loadgen,
        server_log: None,
        scenarios,
        warnings: vec![format!("merged from {} shard reports", reports.len())],
        passed,
    })
}
