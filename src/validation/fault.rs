//! Verdicts of fault runs: a paced load kept up while a fault is injected from outside (the
//! server killed and restarted, the network cut, the server pushed against its memory limit),
//! judged on what the clients saw.
//!
//! The verdict is computed from the scenario's second-by-second timeline and the server's
//! `Stats` samples, plus the check of acknowledged writes that the loadgen makes after the
//! load (every write answered OK is read back with `Get`):
//! - the **outage** runs from the first to the last second in which requests failed for want
//!   of a server (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, INTERNAL);
//!   RESOURCE_EXHAUSTED is a refusal, not an outage;
//! - **recovery** is how many seconds after the outage's last second the successes per second
//!   are back to a fraction of the baseline (the median second before the outage);
//! - a **restart** is a `Stats` sample whose uptime is below the previous one's.
//!
//! Which of these must hold depends on the fault expected ([`FaultKind`]); every kind requires
//! that no acknowledged write was lost.

use std::collections::BTreeMap;

use super::report::{ScenarioReport, ServerPoint, ThresholdResult};
// The verdict's types live beside the other report types (a report holds a verdict); they
// are re-exported here, where they have always been found.
pub use super::report::{AckCheck, Expectations, FaultKind, FaultVerdict, MAX_LOST_IDS};

/// Longest gap between `Stats` samples that still counts as a server answering (memory runs).
pub const MAX_STATS_GAP_S: f64 = 5.0;

/// Codes that mean the server could not be reached or did not answer.
pub const OUTAGE_CODES: [&str; 5] = [
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "UNKNOWN",
    "INTERNAL",
];

fn outage_errors_in(errors: &BTreeMap<String, u64>) -> u64 {
    OUTAGE_CODES
        .iter()
        .map(|c| errors.get(*c).copied().unwrap_or(0))
        .sum()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Longest a `Stats` sample can take (the monitor's deadline): a sample's time is when its
/// answer arrived, up to this long after the server read its uptime.
const STATS_DEADLINE_MS: f64 = 2_000.0;

/// Whether the server restarted between two consecutive `Stats` samples: the second's uptime
/// is below the first's, and short enough that the process started after the first was
/// answered. Only a drop is not enough: samples taken at once (the periodic one and one at a
/// phase edge) can be stored in the other order than the server answered them, a few
/// milliseconds of uptime apart, and that once counted a restart that never happened.
fn restarted_between(before: &ServerPoint, after: &ServerPoint) -> bool {
    before.uptime_ms > 0
        && after.uptime_ms > 0
        && after.uptime_ms < before.uptime_ms
        && after.uptime_ms as f64 <= (after.t_s - before.t_s).max(0.0) * 1000.0 + STATS_DEADLINE_MS
}

/// Judges `scenario` (its timeline and server samples) and the read-back `acks` against a
/// `kind` of fault: the verdict, and each check as a threshold result (scope `fault`).
pub fn judge(
    scenario: &ScenarioReport,
    kind: FaultKind,
    expectations: Expectations,
    acks: AckCheck,
) -> (FaultVerdict, Vec<ThresholdResult>) {
    let timeline = &scenario.timeline;
    // The last second is usually cut short by the end of the run: it says nothing about
    // throughput, only about errors.
    let whole = timeline.len().saturating_sub(1);
    let bad: Vec<usize> = (0..timeline.len())
        .filter(|&i| outage_errors_in(&timeline[i].errors) > 0)
        .collect();
    let (first_bad, last_bad) = (bad.first().copied(), bad.last().copied());
    let before: Vec<f64> = timeline[..first_bad.unwrap_or(whole).min(whole)]
        .iter()
        .map(|p| p.successes as f64)
        .collect();
    let baseline_qps = if before.len() >= 3 {
        median(before).unwrap_or(expectations.target_qps)
    } else {
        expectations.target_qps
    };
    let recovery_s = last_bad.and_then(|last| {
        (last + 1..timeline.len())
            .find(|&i| {
                timeline[i].successes as f64 >= expectations.recovered_fraction * baseline_qps
            })
            .map(|i| (i - (last + 1)) as f64)
    });
    let mut outage_errors = BTreeMap::new();
    for point in timeline {
        for code in OUTAGE_CODES {
            if let Some(n) = point.errors.get(code).filter(|n| **n > 0) {
                *outage_errors.entry(code.to_string()).or_insert(0) += n;
            }
        }
    }
    let restarts = scenario
        .server_timeline
        .windows(2)
        .filter(|w| restarted_between(&w[0], &w[1]))
        .count() as u64;
    let verdict = FaultVerdict {
        kind,
        expectations,
        baseline_qps,
        outage_start_s: first_bad.map(|i| timeline[i].t_s),
        outage_end_s: last_bad.map(|i| timeline[i].t_s + 1.0),
        outage_s: match (first_bad, last_bad) {
            (Some(a), Some(b)) => (b - a + 1) as f64,
            _ => 0.0,
        },
        outage_errors,
        recovery_s,
        refused: scenario.total.code("RESOURCE_EXHAUSTED"),
        seconds_without_success: timeline[..whole]
            .iter()
            .filter(|p| p.successes == 0)
            .count() as u64,
        server_restarts: restarts,
        max_stats_gap_s: scenario
            .server_timeline
            .windows(2)
            .map(|w| w[1].t_s - w[0].t_s)
            .fold(0.0, f64::max),
        acks,
    };
    let checks = checks(&verdict);
    (verdict, checks)
}

fn check(expression: String, observed: f64, passed: bool) -> ThresholdResult {
    ThresholdResult {
        scope: "fault".into(),
        expression,
        observed,
        passed,
    }
}

/// The checks a verdict must pass for its kind of fault.
pub fn checks(v: &FaultVerdict) -> Vec<ThresholdResult> {
    let e = &v.expectations;
    let outage_errors: u64 = v.outage_errors.values().sum();
    let mut checks = vec![
        check(
            "acked_writes>0 (the run wrote something to check)".into(),
            v.acks.acked as f64,
            v.acks.acked > 0,
        ),
        check(
            "acked_writes_lost==0".into(),
            v.acks.lost as f64,
            v.acks.lost == 0,
        ),
        check(
            "acked_writes_unverified==0".into(),
            v.acks.unverified as f64,
            v.acks.unverified == 0,
        ),
    ];
    // -1 stands for "never": JSON has no infinity.
    let recovered = || {
        check(
            format!(
                "recovered: ok/s >= {:.0}% of baseline {:.1} within {}s of the outage's end",
                e.recovered_fraction * 100.0,
                v.baseline_qps,
                e.recover_within_s
            ),
            v.recovery_s.unwrap_or(-1.0),
            v.recovery_s.is_some_and(|r| r <= e.recover_within_s),
        )
    };
    let max_outage = || {
        check(
            format!("outage_s<={}", e.max_outage_s),
            v.outage_s,
            v.outage_s <= e.max_outage_s,
        )
    };
    let no_restart = || {
        check(
            "server_restarts==0".into(),
            v.server_restarts as f64,
            v.server_restarts == 0,
        )
    };
    match v.kind {
        FaultKind::Restart => {
            let unavailable = v.outage_errors.get("UNAVAILABLE").copied().unwrap_or(0);
            checks.push(check(
                "outage seen: UNAVAILABLE>0".into(),
                unavailable as f64,
                unavailable > 0,
            ));
            checks.push(check(
                "server_restarts>=1".into(),
                v.server_restarts as f64,
                v.server_restarts >= 1,
            ));
            checks.push(max_outage());
            checks.push(recovered());
        }
        FaultKind::Partition => {
            checks.push(check(
                "outage seen: outage_errors>0".into(),
                outage_errors as f64,
                outage_errors > 0,
            ));
            checks.push(no_restart());
            checks.push(max_outage());
            checks.push(recovered());
        }
        FaultKind::Memory => {
            checks.push(check(
                "refused: RESOURCE_EXHAUSTED>0".into(),
                v.refused as f64,
                v.refused > 0,
            ));
            checks.push(no_restart());
            // A server the kernel killed is refused connections: UNAVAILABLE. Deadlines are
            // not counted here: a server busy with a snapshot under heavy writes is slow,
            // not gone.
            let unavailable = v.outage_errors.get("UNAVAILABLE").copied().unwrap_or(0);
            checks.push(check(
                "UNAVAILABLE==0 (never unreachable)".into(),
                unavailable as f64,
                unavailable == 0,
            ));
            // Alive and answering: Stats (outside admission and the memory guard) never went
            // unanswered for long. Seconds without a successful request are reported but not
            // judged: a paced worker waiting on a slow write holds back its searches too.
            checks.push(check(
                format!("max_stats_gap_s<={MAX_STATS_GAP_S} (kept answering)"),
                v.max_stats_gap_s,
                v.max_stats_gap_s <= MAX_STATS_GAP_S,
            ));
        }
        FaultKind::None => {
            checks.push(check(
                "outage_errors==0".into(),
                outage_errors as f64,
                outage_errors == 0,
            ));
            checks.push(no_restart());
        }
    }
    checks
}

/// Judges the merged scenario of a distributed fault run: the shards' read-back checks add
/// up, their target rates too, and the rest is judged again on the merged timeline.
pub fn merge(
    merged: &ScenarioReport,
    shards: &[&FaultVerdict],
) -> Option<(FaultVerdict, Vec<ThresholdResult>)> {
    let first = shards.first()?;
    let mut acks = AckCheck::default();
    let mut expectations = first.expectations;
    expectations.target_qps = 0.0;
    for shard in shards {
        acks.add(&shard.acks);
        expectations.target_qps += shard.expectations.target_qps;
    }
    let (mut verdict, _) = judge(merged, first.kind, expectations, acks);
    // The server is the same for every shard; a restart seen by any of them happened.
    verdict.server_restarts = verdict
        .server_restarts
        .max(shards.iter().map(|s| s.server_restarts).max().unwrap_or(0));
    let checks = checks(&verdict);
    Some((verdict, checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::report::{PhaseReport, ServerPoint, TimePoint};

    fn second(t: usize, successes: u64, errors: &[(&str, u64)]) -> TimePoint {
        TimePoint {
            t_s: t as f64,
            requests: successes + errors.iter().map(|(_, n)| n).sum::<u64>(),
            successes,
            errors: errors.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            ..Default::default()
        }
    }

    fn scenario(timeline: Vec<TimePoint>, uptimes: &[u64], refused: u64) -> ScenarioReport {
        let mut total = PhaseReport::default();
        if refused > 0 {
            total.codes.insert("RESOURCE_EXHAUSTED".into(), refused);
        }
        ScenarioReport {
            server_metrics: Default::default(),
            name: "fault".into(),
            description: String::new(),
            parameters: BTreeMap::new(),
            duration_s: timeline.len() as f64,
            phases: vec![total.clone()],
            total,
            server: Default::default(),
            thresholds: Vec::new(),
            loadgen: Default::default(),
            warnings: Vec::new(),
            passed: true,
            timeline,
            fine_timeline: Vec::new(),
            server_timeline: uptimes
                .iter()
                .enumerate()
                .map(|(i, u)| ServerPoint {
                    t_s: i as f64,
                    uptime_ms: *u,
                    ..Default::default()
                })
                .collect(),
            fault: None,
        }
    }

    fn expect() -> Expectations {
        Expectations {
            target_qps: 100.0,
            recovered_fraction: 0.8,
            recover_within_s: 5.0,
            max_outage_s: 20.0,
        }
    }

    fn acks(acked: u64, lost: u64) -> AckCheck {
        AckCheck {
            acked,
            verified: acked - lost,
            lost,
            unverified: 0,
            lost_ids: Vec::new(),
        }
    }

    fn failed(checks: &[ThresholdResult]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.expression.clone())
            .collect()
    }

    /// Ten good seconds, an outage of 3 s with UNAVAILABLE, one slow second, good again; a
    /// restart in the samples.
    fn restart_timeline() -> Vec<TimePoint> {
        let mut t: Vec<TimePoint> = (0..10).map(|i| second(i, 100, &[])).collect();
        t.push(second(10, 40, &[("UNAVAILABLE", 60)]));
        t.push(second(11, 0, &[("UNAVAILABLE", 100)]));
        t.push(second(12, 10, &[("UNAVAILABLE", 90)]));
        t.push(second(13, 50, &[]));
        t.extend((14..20).map(|i| second(i, 120, &[])));
        t.push(second(20, 30, &[])); // the cut-short last second
        t
    }

    #[test]
    fn a_restart_with_recovery_passes() {
        let s = scenario(restart_timeline(), &[1000, 2000, 3000, 500, 1500], 0);
        let (v, checks) = judge(&s, FaultKind::Restart, expect(), acks(500, 0));
        assert_eq!(v.outage_start_s, Some(10.0));
        assert_eq!(v.outage_end_s, Some(13.0));
        assert_eq!(v.outage_s, 3.0);
        assert_eq!(v.outage_errors["UNAVAILABLE"], 250);
        assert_eq!(v.baseline_qps, 100.0);
        assert_eq!(v.recovery_s, Some(1.0), "second 13 is slow, 14 is back");
        assert_eq!(v.server_restarts, 1);
        assert_eq!(v.seconds_without_success, 1);
        assert!(failed(&checks).is_empty(), "{:?}", failed(&checks));
        // The same run is a failed partition (the server restarted) and a failed control.
        let (_, checks) = judge(&s, FaultKind::Partition, expect(), acks(500, 0));
        assert_eq!(failed(&checks), ["server_restarts==0"]);
        let (_, checks) = judge(&s, FaultKind::None, expect(), acks(500, 0));
        assert_eq!(failed(&checks).len(), 2);
    }

    #[test]
    fn samples_stored_out_of_order_are_not_a_restart() {
        let point = |t_s: f64, uptime_ms: u64| ServerPoint {
            t_s,
            uptime_ms,
            ..ServerPoint::default()
        };
        // Two samples at a phase edge, stored in the other order: 3 ms of uptime back.
        assert!(!restarted_between(
            &point(12.0, 12_003),
            &point(12.0, 12_000)
        ));
        // A real restart: the new process is younger than the time since the last sample.
        assert!(restarted_between(&point(12.0, 12_003), &point(16.0, 900)));
        assert!(!restarted_between(
            &point(12.0, 12_003),
            &point(16.0, 16_000)
        ));
    }

    #[test]
    fn lost_writes_no_recovery_and_no_fault_fail() {
        let s = scenario(restart_timeline(), &[1000, 500], 0);
        let (_, checks) = judge(&s, FaultKind::Restart, expect(), acks(500, 2));
        assert_eq!(failed(&checks), ["acked_writes_lost==0"]);
        let (_, checks) = judge(&s, FaultKind::Restart, expect(), acks(0, 0));
        assert_eq!(failed(&checks).len(), 1, "nothing written proves nothing");

        // Errors until the very end: never recovered.
        let mut t: Vec<TimePoint> = (0..5).map(|i| second(i, 100, &[])).collect();
        t.extend((5..10).map(|i| second(i, 0, &[("DEADLINE_EXCEEDED", 10)])));
        let (v, checks) = judge(
            &scenario(t, &[], 0),
            FaultKind::Partition,
            expect(),
            acks(5, 0),
        );
        assert_eq!(v.recovery_s, None);
        assert_eq!(failed(&checks).len(), 1, "{:?}", failed(&checks));
        assert_eq!(
            checks.iter().find(|c| !c.passed).map(|c| c.observed),
            Some(-1.0)
        );

        // A restart run in which nothing happened fails: the fault was never seen.
        let t: Vec<TimePoint> = (0..10).map(|i| second(i, 100, &[])).collect();
        let (_, checks) = judge(
            &scenario(t, &[1, 2, 3], 0),
            FaultKind::Restart,
            expect(),
            acks(5, 0),
        );
        assert_eq!(
            failed(&checks),
            [
                "outage seen: UNAVAILABLE>0",
                "server_restarts>=1",
                "recovered: ok/s >= 80% of baseline 100.0 within 5s of the outage's end"
            ]
        );
    }

    #[test]
    fn memory_refusals_pass_and_a_kill_fails() {
        let t: Vec<TimePoint> = (0..10)
            .map(|i| second(i, 60, &[("RESOURCE_EXHAUSTED", 40)]))
            .collect();
        let (v, checks) = judge(
            &scenario(t, &[1, 2, 3], 400),
            FaultKind::Memory,
            expect(),
            acks(9, 0),
        );
        assert_eq!(v.outage_s, 0.0);
        assert!(failed(&checks).is_empty(), "{:?}", failed(&checks));
        // Killed by the OOM killer: UNAVAILABLE, an uptime that went back, no Stats for 8 s.
        let mut s = scenario(restart_timeline(), &[1000, 2000, 100], 400);
        s.server_timeline[2].t_s = 10.0;
        let (_, checks) = judge(&s, FaultKind::Memory, expect(), acks(9, 0));
        assert_eq!(
            failed(&checks),
            [
                "server_restarts==0",
                "UNAVAILABLE==0 (never unreachable)",
                "max_stats_gap_s<=5 (kept answering)"
            ]
        );
    }

    #[test]
    fn merged_shards_add_up() {
        let s = scenario(restart_timeline(), &[1000, 500], 0);
        let (a, _) = judge(&s, FaultKind::Restart, expect(), acks(10, 0));
        let (mut b, _) = judge(&s, FaultKind::Restart, expect(), acks(20, 1));
        b.acks.lost_ids = vec![7];
        let (v, checks) = merge(&s, &[&a, &b]).expect("verdict");
        assert_eq!(
            (v.acks.acked, v.acks.lost, v.acks.lost_ids.clone()),
            (30, 1, vec![7])
        );
        assert_eq!(v.expectations.target_qps, 200.0);
        assert_eq!(failed(&checks), ["acked_writes_lost==0"]);
        assert!(merge(&s, &[]).is_none());
        assert_eq!("partition".parse::<FaultKind>(), Ok(FaultKind::Partition));
        assert!("oom".parse::<FaultKind>().is_err());
    }
}
