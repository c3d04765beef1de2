//! The specification's pass criteria for its five stress scenarios, as thresholds, and the
//! graceful-degradation rules that every run must keep whatever its thresholds.
//!
//! The specification's numbers are floors: a scenario's defaults reproduce them, and users
//! tighten them with their own `--threshold`s.

use super::report::{PhaseReport, ScenarioReport, ThresholdResult};
use super::threshold::Threshold;

fn parse(expressions: &[&str]) -> Vec<Threshold> {
    expressions
        .iter()
        .map(|e| e.parse().expect("built-in thresholds parse"))
        .collect()
}

/// 1000+ concurrent users with a 95%+ success rate, at 500+ QPS.
pub fn extreme_concurrency() -> Vec<Threshold> {
    parse(&["success_rate>=0.95", "qps>=500", "server_faults==0"])
}

/// Memory stays within bounds under ~150 KB queries: under 1 GB of server growth.
pub fn memory_pressure() -> Vec<Threshold> {
    parse(&["server_rss_growth<1GB", "server_faults==0"])
}

/// Sustained load: at least 80% of the target rate, at most 5% errors, 500 ms mean latency.
pub fn sustained(target_qps: f64) -> Vec<Threshold> {
    let mut thresholds = parse(&["error_rate<=0.05", "ok_avg<=500ms", "server_faults==0"]);
    thresholds.push(
        format!("qps>={}", target_qps * 0.8)
            .parse()
            .expect("qps threshold parses"),
    );
    thresholds
}

/// Resource exhaustion: at least 70% of requests answered before their deadline.
pub fn resource_exhaustion() -> Vec<Threshold> {
    parse(&["completion_rate>=0.7", "server_faults==0"])
}

/// Rapid scale up and down: at most 10% errors in every phase.
pub fn scale() -> Vec<Threshold> {
    parse(&["error_rate<=0.1@*", "server_faults==0"])
}

/// How much slower the last phase may be than the first and still count as recovered.
pub const RECOVERY_P99_FACTOR: f64 = 3.0;
/// Absolute slack on top of the factor, for phases whose p99 is a fraction of a millisecond.
pub const RECOVERY_P99_SLACK_MS: f64 = 50.0;

/// "The system recovers after scaling events": the last phase's p99 is back within
/// [`RECOVERY_P99_FACTOR`] x the first phase's (plus [`RECOVERY_P99_SLACK_MS`]) and it has no
/// errors beyond the first phase's rate.
pub fn recovery(scenario: &ScenarioReport) -> Option<ThresholdResult> {
    let first = scenario.phases.first()?;
    let last = scenario.phases.last()?;
    if scenario.phases.len() < 2 {
        return None;
    }
    let limit = first.latency.p99_ms * RECOVERY_P99_FACTOR + RECOVERY_P99_SLACK_MS;
    let observed = last.latency.p99_ms;
    Some(ThresholdResult {
        scope: last.name.clone(),
        expression: format!(
            "recovered: p99 <= {RECOVERY_P99_FACTOR} x first phase p99 + {RECOVERY_P99_SLACK_MS}ms (= {limit:.1}ms) and error_rate <= first phase's"
        ),
        observed,
        passed: observed <= limit && last.error_rate() <= first.error_rate() + 0.01,
    })
}

/// Graceful degradation, whatever the thresholds: no answer may be INTERNAL, UNKNOWN or
/// DATA_LOSS, and overload may only ever show as RESOURCE_EXHAUSTED (shed), UNAVAILABLE
/// (draining), or a deadline. Returns what was violated, empty when nothing was.
pub fn graceful_violations(scenario: &ScenarioReport) -> Vec<String> {
    let allowed = [
        "OK",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
    ];
    let mut violations = Vec::new();
    let mut check = |phase: &PhaseReport| {
        for (code, count) in &phase.codes {
            if *count > 0 && !allowed.contains(&code.as_str()) {
                violations.push(format!(
                    "{}/{}: {count} requests answered {code}",
                    scenario.name, phase.name
                ));
            }
        }
    };
    for phase in &scenario.phases {
        check(phase);
    }
    violations
}
