//! Recording outcomes while a phase runs.
//!
//! Nothing on the request path takes a shared lock: each sending thread records into its own
//! [`Batch`] (plain fields, no atomics), and hands it to the phase's shared [`PhaseRecorder`] every
//! second and when the phase ends. Live progress, the monitor line and `--abort-on-fail` read
//! that merged view, which is therefore at most a second old.

use std::sync::Mutex;

use crate::measure::histogram::micros;
use crate::measure::outcomes::{Outcome, Outcomes};
use crate::measure::slices::Slices;
use crate::measure::timeline::{Second, Slot, Timeline};

/// What one sending thread recorded since it last handed its record over: owned by that
/// thread alone, so recording a request takes no lock and touches no shared cache line.
#[derive(Debug, Default)]
pub struct Batch {
    outcomes: Outcomes,
    /// `(where in the scenario, what was answered there)`, in order, a tenth of a second
    /// each; a batch spans a second or two.
    seconds: Vec<(Slot, Second)>,
}

impl Batch {
    /// Adds one request, answered `at`, to the outcomes and to the timeline's second of `at`.
    pub fn record(
        &mut self,
        outcome: &Outcome,
        timeline: Option<&Timeline>,
        at: std::time::Instant,
    ) {
        self.outcomes.record(outcome);
        let Some(timeline) = timeline else { return };
        let slot = timeline.slot_of(at);
        if self.seconds.last().is_none_or(|(s, _)| *s != slot) {
            self.seconds.push((slot, Second::new()));
        }
        if let Some((_, s)) = self.seconds.last_mut() {
            s.latency.saturating_record(micros(outcome.latency));
            s.codes[outcome.last_index()] += 1;
        }
    }

    /// Counts an arrival of the open model that could not be sent on time.
    pub fn drop_arrival(&mut self) {
        self.outcomes.drop_arrival();
    }

    /// Counts one failed answer's reason.
    pub fn note_reason(&mut self, reason: &str) {
        self.outcomes.note_reasons(reason, 1);
    }

    /// The outcomes recorded since the last hand-over.
    pub fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }
}

/// A phase's outcomes merged from every sending thread's [`Batch`]: the view that reports,
/// progress and mid-run judging read; and, with a timeline, the phase's latencies by time
/// ([`Slices`]).
#[derive(Debug, Default)]
pub struct PhaseRecorder {
    outcomes: Mutex<Outcomes>,
    timeline: Option<std::sync::Arc<Timeline>>,
    slices: Mutex<Option<Slices>>,
}

impl PhaseRecorder {
    /// A recorder that also feeds the scenario's `timeline`, starting now.
    pub fn with_timeline(timeline: std::sync::Arc<Timeline>) -> Self {
        let first = timeline.slot_of(std::time::Instant::now());
        Self {
            outcomes: Mutex::default(),
            timeline: Some(timeline),
            slices: Mutex::new(Some(Slices::from(first))),
        }
    }

    /// The timeline that batches record their seconds against.
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_deref()
    }

    /// Takes over what `batch` recorded, leaving it empty.
    pub fn flush(&self, batch: &mut Batch) {
        if batch.outcomes.requests() > 0 || batch.outcomes.dropped > 0 {
            self.outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .merge(&batch.outcomes);
            batch.outcomes.clear();
        }
        if let Some(timeline) = &self.timeline {
            timeline.absorb(&batch.seconds);
        }
        if let Some(slices) = self
            .slices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            slices.absorb(&batch.seconds);
        }
        batch.seconds.clear();
    }

    /// The phase's latencies by time, encoded for the report (empty without a timeline).
    pub fn slices(&self) -> Vec<String> {
        self.slices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Slices::encoded)
            .unwrap_or_default()
    }

    /// A copy of everything handed over so far.
    pub fn snapshot(&self) -> Outcomes {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
    use vecrig::validation::report::ServerFigures;

    use super::*;
    use crate::measure::outcomes::outcome;
    use crate::measure::timeline::Timeline;

    #[test]
    fn batches_flushed_from_threads_add_up() {
        let timeline = std::sync::Arc::new(Timeline::new());
        let recorder = std::sync::Arc::new(PhaseRecorder::with_timeline(timeline.clone()));
        std::thread::scope(|scope| {
            for thread in 0..3u64 {
                let recorder = &recorder;
                scope.spawn(move || {
                    let mut batch = Batch::default();
                    for i in 0..100 {
                        let code = if i % 10 == 0 {
                            Code::Unavailable
                        } else {
                            Code::Ok
                        };
                        let answered = std::time::Instant::now();
                        batch.record(
                            &outcome(code, code, thread + 1),
                            recorder.timeline(),
                            answered,
                        );
                        if i % 30 == 0 {
                            recorder.flush(&mut batch);
                        }
                    }
                    batch.drop_arrival();
                    recorder.flush(&mut batch);
                    assert_eq!(batch.outcomes().requests(), 0);
                });
            }
        });
        let total = recorder.snapshot();
        assert_eq!(total.requests(), 300);
        assert_eq!(total.successes(), 270);
        assert_eq!(total.latency.len(), 300);
        assert_eq!(total.by_code.len(), 2);
        let r = total.report("p", 3, Duration::from_secs(1), ServerFigures::default());
        assert_eq!(r.dropped, 3);
        let points = timeline.points();
        assert_eq!(points.iter().map(|p| p.requests).sum::<u64>(), 300);
        assert_eq!(points.iter().map(|p| p.successes).sum::<u64>(), 270);
        // Within its first 10 s, the same answers by tenths too.
        let fine = timeline.fine_points();
        assert_eq!(fine.iter().map(|p| p.requests).sum::<u64>(), 300);
        assert!(fine.iter().all(|p| p.t_s < 10.0));
    }
}
