//! Recall under load: a sample of a phase's searches, their answers kept in a bounded
//! reservoir, checked after the phase against the target's exact answer (`exact = true`,
//! same query and k) into [`RecallFigures`].
//!
//! - **Which searches**: one in `round(1 / --recall-sample)` of each sending thread's
//!   searches (a counter, not a random draw: nothing on the request path but an increment).
//!   A sampled search is sent over tonic's connection (off the hot path's client) because
//!   its answer's ids are needed; its outcome and latency are recorded like any other.
//! - **Bounded memory**: at most [`CAPACITY`] samples a phase (reservoir sampling, each
//!   sampled search equally likely to be kept).
//! - **Outside the measured window**: the exact answers are asked after the phase's figures
//!   are taken, one at a time, at most [`EXACT_RATE`] a second, so the check neither loads
//!   the server much nor shows in the phase's latency.
//! - **The loadgen's own writes**: a search sent while one of the loadgen's upserts was in
//!   flight, or followed by another upsert in the run, is left out (counted in `skipped`):
//!   the exact answer, asked later, could hold points that search could not have seen.
//!   Writes by other clients are not known and count against recall.
//! - **Ground truth of our own** (a templated target with an `ingest` phase): the exact
//!   answers are computed by the loadgen over the data set it wrote ([`Truth::exact`]), on a
//!   blocking thread after the phase, at most [`CAPACITY`] scans of the data set a phase,
//!   instead of being asked of the target.
//! - **A target that stops answering**: after [`GIVE_UP_AFTER`] exact answers in a row fail
//!   for want of the target (deadline passed, cancelled, unavailable), the rest are skipped:
//!   else a frozen target would hold the report back one deadline per sample (500 of them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;
use vecrig::client::{Metadata, request_with};
use vecrig::proto::SearchRequest;
use vecrig::proto::search_request::Query;
use vecrig::proto::vector_index_client::VectorIndexClient;
use vecrig::validation::report::RecallFigures;

use crate::dynamic::Truth;

/// Samples kept per phase at most.
pub const CAPACITY: usize = 500;
/// Exact answers asked per second at most after a phase.
pub const EXACT_RATE: f64 = 250.0;
/// Exact answers failing in a row (deadline passed, cancelled, or unavailable) after which the
/// rest of a phase's check is skipped.
pub const GIVE_UP_AFTER: u32 = 3;

/// One sampled search: the request, the ids it was answered with, and the loadgen's write
/// counts when it was sent.
#[derive(Debug, Clone)]
pub struct RecallSample {
    /// The search as sent.
    pub request: SearchRequest,
    /// The ids of its answer, nearest first.
    pub ids: Vec<u64>,
    /// The loadgen's upserts started when it was sent.
    pub writes_started: u64,
}

/// A phase's bounded sample (Algorithm R).
#[derive(Debug, Default)]
pub struct Reservoir {
    seen: u64,
    samples: Vec<RecallSample>,
}

impl Reservoir {
    /// Offers one sample: kept while there is room, then replacing a random one with
    /// probability `CAPACITY / seen`.
    pub fn offer(&mut self, sample: RecallSample) {
        self.seen += 1;
        if self.samples.len() < CAPACITY {
            self.samples.push(sample);
            return;
        }
        let at = rand::random_range(0..self.seen);
        if let Some(slot) = self.samples.get_mut(at as usize) {
            *slot = sample;
        }
    }

    /// The samples kept.
    pub fn into_samples(self) -> Vec<RecallSample> {
        self.samples
    }
}

/// The run's recall sampling: how often, the loadgen's own write counts, and the current
/// phase's reservoir.
#[derive(Debug, Clone, Default)]
pub struct Recall {
    /// Sample one search in this many (0: off).
    pub every: u64,
    writes_started: Arc<AtomicU64>,
    writes_done: Arc<AtomicU64>,
    reservoir: Option<Arc<Mutex<Reservoir>>>,
    /// The data set the loadgen wrote, when it answers the exact searches itself.
    truth: Option<Arc<Truth>>,
}

impl Recall {
    /// Sampling a `fraction` of searches (0: none).
    pub fn new(fraction: f64) -> Self {
        let every = if fraction > 0.0 && fraction.is_finite() {
            (1.0 / fraction.min(1.0)).round().max(1.0) as u64
        } else {
            0
        };
        Self {
            every,
            ..Self::default()
        }
    }

    /// The same sampling, with exact answers computed over `truth` instead of asked.
    pub fn with_truth(self, truth: Option<Arc<Truth>>) -> Self {
        Self { truth, ..self }
    }

    /// Whether searches are sampled at all.
    pub fn is_on(&self) -> bool {
        self.every > 0
    }

    /// The same sampling with a fresh reservoir, for one phase.
    pub fn for_phase(&self) -> Self {
        Self {
            reservoir: self.is_on().then(Arc::default),
            ..self.clone()
        }
    }

    /// The phase's samples (empty outside a phase or when off).
    pub fn take_samples(&self) -> Vec<RecallSample> {
        self.reservoir
            .as_ref()
            .map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|p| p.into_inner())))
            .map(Reservoir::into_samples)
            .unwrap_or_default()
    }

    /// Counts one of the loadgen's upserts as started; the guard counts it done.
    pub fn write_started(&self) -> WriteGuard {
        self.writes_started.fetch_add(1, Ordering::AcqRel);
        WriteGuard(Arc::clone(&self.writes_done))
    }

    /// The loadgen's upserts started so far, when none is in flight (else `None`: a search
    /// sent now may or may not see one of them).
    pub fn quiet_writes(&self) -> Option<u64> {
        let done = self.writes_done.load(Ordering::Acquire);
        let started = self.writes_started.load(Ordering::Acquire);
        (started == done).then_some(started)
    }

    /// Keeps a search answered with `ids`, sent when `writes` was the upserts started.
    pub fn keep(&self, request: &SearchRequest, ids: Vec<u64>, writes: Option<u64>) {
        let Some(reservoir) = &self.reservoir else {
            return;
        };
        // A search sent while a write was in flight is counted, never checked.
        let sample = RecallSample {
            request: request.clone(),
            ids,
            writes_started: writes.unwrap_or(u64::MAX),
        };
        reservoir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offer(sample);
    }

    /// Asks the target for the exact answer to each sample, at most [`EXACT_RATE`] a second,
    /// and scores the samples' answers against them. `None` when nothing was sampled.
    pub async fn check(
        &self,
        samples: Vec<RecallSample>,
        mut client: VectorIndexClient<Channel>,
        headers: &Metadata,
        timeout: Duration,
        stopped: impl Fn() -> bool,
    ) -> Option<RecallFigures> {
        if samples.is_empty() {
            return None;
        }
        let writes_now = self.writes_started.load(Ordering::Acquire);
        if let Some(truth) = &self.truth {
            let truth = Arc::clone(truth);
            let scored =
                tokio::task::spawn_blocking(move || own_check(&truth, samples, writes_now));
            return scored.await.ok();
        }
        let mut figures = RecallFigures::default();
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / EXACT_RATE));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = 0;
        for sample in samples {
            if sample.writes_started != writes_now || stopped() || unanswered >= GIVE_UP_AFTER {
                figures.skipped += 1;
                continue;
            }
            pace.tick().await;
            let exact = SearchRequest {
                exact: true,
                ef: 0,
                with_payload: false,
                ..sample.request.clone()
            };
            // tonic's own deadline covers the wait for the answer's headers, not its body.
            let answer = tokio::time::timeout(
                timeout,
                client.search(request_with(exact, timeout, headers)),
            )
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("exact answer")));
            match answer {
                Ok(answer) => {
                    let expected: Vec<u64> =
                        answer.into_inner().hits.iter().map(|h| h.id).collect();
                    figures.add(hits(&sample.ids, &expected), expected.len() as u64);
                    unanswered = 0;
                }
                Err(status) => {
                    figures.skipped += 1;
                    // tonic's client reports its own deadline passing as CANCELLED.
                    if matches!(
                        status.code(),
                        tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                            | tonic::Code::Unavailable
                    ) {
                        unanswered += 1;
                    }
                }
            }
        }
        Some(figures)
    }
}

/// Scores samples against the exact answers over `truth` (what the loadgen wrote).
fn own_check(truth: &Truth, samples: Vec<RecallSample>, writes_now: u64) -> RecallFigures {
    let mut figures = RecallFigures::default();
    for sample in samples {
        let query = match &sample.request.query {
            Some(Query::Vector(v)) if sample.writes_started == writes_now => &v.values,
            _ => {
                figures.skipped += 1;
                continue;
            }
        };
        let expected = truth.exact(query, sample.request.k as usize);
        if expected.is_empty() {
            figures.skipped += 1;
            continue;
        }
        figures.add(hits(&sample.ids, &expected), expected.len() as u64);
    }
    figures
}

/// Counts a write done when dropped (answered, failed or abandoned).
#[derive(Debug)]
pub struct WriteGuard(Arc<AtomicU64>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// How many of `expected` are in `answer` (each counted once).
fn hits(answer: &[u64], expected: &[u64]) -> u64 {
    expected.iter().filter(|id| answer.contains(id)).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rate_reservoir_bound_and_hits() {
        assert_eq!(Recall::new(0.01).every, 100);
        assert_eq!(Recall::new(0.3).every, 3);
        assert_eq!(Recall::new(0.0).every, 0);
        assert_eq!(Recall::new(5.0).every, 1);
        let recall = Recall::new(1.0).for_phase();
        for i in 0..(CAPACITY as u64 * 3) {
            recall.keep(&SearchRequest::default(), vec![i], Some(0));
        }
        assert_eq!(recall.take_samples().len(), CAPACITY);
        assert!(recall.take_samples().is_empty());
        assert_eq!(hits(&[1, 2, 3], &[3, 4, 1]), 2);
        let guard = recall.write_started();
        assert_eq!(recall.quiet_writes(), None);
        drop(guard);
        assert_eq!(recall.quiet_writes(), Some(1));
    }
}
