//! Judging while a run goes on (`--abort-on-fail`): the abort watch that checks upper bounds
//! every second on a phase so far, and the check of a phase's thresholds when it ends. The
//! end-of-scenario verdict is [`vecrig::validation::threshold::judge`]'s; all three decide
//! where a threshold applies by one rule, [`Scope::covers_phase`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use vecrig::validation::report::{PhaseReport, ThresholdResult};
use vecrig::validation::threshold::{self, Scope, Threshold};

use super::context::Stop;
use crate::measure::outcomes::Outcomes;
use crate::measure::recorder::PhaseRecorder;

/// Watches a running phase for a failed threshold when `--abort-on-fail` is on.
pub(crate) struct AbortWatch {
    pub scenario: String,
    pub phase: String,
    pub concurrency: u64,
    pub thresholds: Vec<Threshold>,
    /// The scenario's outcomes before this phase, for thresholds on the totals.
    pub total_before: Outcomes,
    pub recorder: Arc<PhaseRecorder>,
    pub stop: Stop,
}

impl AbortWatch {
    /// Every second after `grace`, judges the upper-bound thresholds (`p99<50ms`,
    /// `error_rate<0.01`, ...) on the phase so far, and the totals so far; the first failure
    /// aborts the run and is returned. Lower bounds (`qps>500`) are left to the end of the
    /// phase: a phase that has only begun has not yet had its chance to reach them.
    pub async fn run(self, grace: Duration, phase_started: Instant) -> Option<ThresholdResult> {
        tokio::time::sleep_until((phase_started + grace).into()).await;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let elapsed = phase_started.elapsed();
            let outcomes = self.recorder.snapshot();
            let mut totals = self.total_before.clone();
            totals.merge(&outcomes);
            let figures = Default::default();
            let phase = outcomes.report(&self.phase, self.concurrency, elapsed, figures);
            let total = totals.report("total", self.concurrency, elapsed, Default::default());
            let failure = self
                .thresholds
                .iter()
                .filter(|t| matches!(t.op, threshold::Op::Lt | threshold::Op::Le))
                .filter(|t| !t.metric.is_server_figure() && !t.metric.is_known_after_phase())
                .find_map(|t| {
                    let (scope, observed) = if t.scope == Scope::Total {
                        ("total", &total)
                    } else if t.scope.covers_phase(&self.phase) {
                        (self.phase.as_str(), &phase)
                    } else {
                        return None;
                    };
                    let value = t.observe(observed);
                    (!t.holds(value)).then(|| ThresholdResult {
                        scope: format!("{scope} at {:.0}s, aborted", elapsed.as_secs_f64()),
                        expression: t.expression.clone(),
                        observed: value,
                        passed: false,
                    })
                });
            if let Some(failure) = failure {
                self.stop.abort(format!(
                    "{}: {} failed in {} (observed {})",
                    self.scenario, failure.expression, failure.scope, failure.observed
                ));
                return Some(failure);
            }
        }
    }
}

/// The first threshold scoped to this phase (by name or `@*`) that fails on its final figures.
pub(crate) fn failed_at_phase_end(
    thresholds: &[Threshold],
    phase: &PhaseReport,
) -> Option<ThresholdResult> {
    thresholds.iter().find_map(|t| {
        let observed = t.observe(phase);
        (t.scope.covers_phase(&phase.name) && !t.holds(observed)).then(|| ThresholdResult {
            scope: format!("{} (end of phase), aborted", phase.name),
            expression: t.expression.clone(),
            observed,
            passed: false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::outcomes::Outcome;
    use tonic::Code;
    use vecrig::validation::report::ServerFigures;

    fn phase(name: &str, p_ms: u64) -> PhaseReport {
        let mut o = Outcomes::default();
        o.record(&Outcome {
            first: Code::Ok,
            last: Code::Ok,
            attempts: 1,
            retries_denied: 0,
            latency: Duration::from_millis(p_ms),
            service_time: Duration::from_millis(p_ms),
            answer_failed: false,
        });
        o.report(name, 1, Duration::from_secs(1), ServerFigures::default())
    }

    fn t(text: &str) -> Threshold {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_phase_end_judges_only_the_thresholds_scoped_to_it() {
        let slow = phase("peak", 100);
        let thresholds = [t("p99<10ms"), t("p99<10ms@other"), t("p99<1s@*")];
        assert_eq!(failed_at_phase_end(&thresholds, &slow), None);
        let failure = failed_at_phase_end(&[t("p99<10ms@peak")], &slow).expect("fails");
        assert_eq!(failure.scope, "peak (end of phase), aborted");
        assert!(!failure.passed);
        assert!(failed_at_phase_end(&[t("p99<10ms@*")], &slow).is_some());
    }
}
