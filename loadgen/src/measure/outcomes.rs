//! What happened to requests: each request's [`Outcome`] (first and last code, attempts,
//! latency from the intended send and service time) and a phase's [`Outcomes`] (histograms
//! and counts by gRPC code and by failure reason), turned into the report's phase summary.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tonic::Code;
use vecrig::validation::report::{
    ANSWER_ERROR, Histograms, PhaseReport, RecallFigures, ServerFigures, code_name,
};

use crate::measure::histogram::{decode, encode, histogram, micros, summarize};

/// All outcomes, indexable by `Code as usize` for the 17 gRPC codes, then [`ANSWER_FAILED`].
pub(super) const CODES: usize = 18;

/// The outcome of an OK answer whose own status said it failed (see
/// [`crate::dynamic::check`]).
const ANSWER_FAILED: usize = 17;

/// Distinct failure reasons a phase keeps; the rest are counted under [`OTHER_REASONS`].
const MAX_REASONS: usize = 10;

/// Where the reasons past [`MAX_REASONS`] are counted.
const OTHER_REASONS: &str = "(other reasons)";

/// The report's name of outcome `i`: a gRPC code's canonical name, or [`ANSWER_ERROR`].
fn outcome_name(i: usize) -> &'static str {
    if i == ANSWER_FAILED {
        ANSWER_ERROR
    } else {
        code_name(Code::from(i as i32))
    }
}

/// The outcomes of one phase so far.
#[derive(Debug, Clone)]
pub struct Outcomes {
    /// Latency of every request, from intended send to final answer, microseconds.
    pub latency: Histogram<u64>,
    /// Latency of successful requests only.
    pub success_latency: Histogram<u64>,
    /// Service time of the final attempt.
    pub service_time: Histogram<u64>,
    /// Latency of requests finally shed (RESOURCE_EXHAUSTED).
    pub shed_latency: Histogram<u64>,
    /// Latency by final code, created for the codes that occur.
    pub by_code: BTreeMap<usize, Histogram<u64>>,
    codes: [u64; CODES],
    first_codes: [u64; CODES],
    attempts: u64,
    retries: u64,
    retries_denied: u64,
    pub(super) dropped: u64,
    /// What failed requests came with: `OUTCOME: text` -> count.
    reasons: BTreeMap<String, u64>,
    /// Recall@k of the sampled searches, once checked against the exact answers.
    pub recall: Option<RecallFigures>,
}

impl Default for Outcomes {
    fn default() -> Self {
        Self {
            latency: histogram(),
            success_latency: histogram(),
            service_time: histogram(),
            shed_latency: histogram(),
            by_code: BTreeMap::new(),
            codes: [0; CODES],
            first_codes: [0; CODES],
            attempts: 0,
            retries: 0,
            retries_denied: 0,
            dropped: 0,
            reasons: BTreeMap::new(),
            recall: None,
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Code of the first attempt.
    pub first: Code,
    /// Code of the final attempt.
    pub last: Code,
    /// Attempts sent.
    pub attempts: u32,
    /// Retries the budget refused.
    pub retries_denied: u32,
    /// From intended send time to final answer.
    pub latency: Duration,
    /// From the final attempt's send to its answer.
    pub service_time: Duration,
    /// The final answer was OK but failed the target's answer check: counted as
    /// [`ANSWER_ERROR`], not OK (and as the first attempt's outcome too when it was the only
    /// one: such answers are not retried).
    pub answer_failed: bool,
}

impl Outcome {
    /// Index of the final outcome.
    pub(super) fn last_index(&self) -> usize {
        if self.answer_failed {
            ANSWER_FAILED
        } else {
            self.last as usize
        }
    }

    /// Index of the first attempt's outcome.
    fn first_index(&self) -> usize {
        if self.answer_failed && self.attempts <= 1 {
            ANSWER_FAILED
        } else {
            self.first as usize
        }
    }
}

impl Outcomes {
    /// Adds one request.
    pub fn record(&mut self, o: &Outcome) {
        let latency = micros(o.latency);
        self.latency.saturating_record(latency);
        match o.last {
            Code::Ok if !o.answer_failed => self.success_latency.saturating_record(latency),
            Code::ResourceExhausted => self.shed_latency.saturating_record(latency),
            _ => {}
        }
        self.service_time.saturating_record(micros(o.service_time));
        self.by_code
            .entry(o.last_index())
            .or_insert_with(histogram)
            .saturating_record(latency);
        self.codes[o.last_index()] += 1;
        self.first_codes[o.first_index()] += 1;
        self.attempts += u64::from(o.attempts);
        self.retries += u64::from(o.attempts.saturating_sub(1));
        self.retries_denied += u64::from(o.retries_denied);
    }

    /// Adds another phase's outcomes (histograms merge losslessly).
    pub fn merge(&mut self, other: &Outcomes) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.success_latency.add(&other.success_latency);
        let _ = self.service_time.add(&other.service_time);
        let _ = self.shed_latency.add(&other.shed_latency);
        for (code, h) in &other.by_code {
            let _ = self.by_code.entry(*code).or_insert_with(histogram).add(h);
        }
        for i in 0..CODES {
            self.codes[i] += other.codes[i];
            self.first_codes[i] += other.first_codes[i];
        }
        self.attempts += other.attempts;
        self.retries += other.retries;
        self.retries_denied += other.retries_denied;
        self.dropped += other.dropped;
        for (reason, n) in &other.reasons {
            self.note_reasons(reason, *n);
        }
        if let Some(theirs) = &other.recall {
            self.recall
                .get_or_insert_with(Default::default)
                .merge(theirs);
        }
    }

    /// Forgets everything, keeping the histograms' memory (a batch is emptied every second).
    pub fn clear(&mut self) {
        self.latency.reset();
        self.success_latency.reset();
        self.service_time.reset();
        self.shed_latency.reset();
        // Dropped, not reset: an empty entry would show as a code that never occurred.
        self.by_code.clear();
        self.codes = [0; CODES];
        self.first_codes = [0; CODES];
        self.attempts = 0;
        self.retries = 0;
        self.retries_denied = 0;
        self.dropped = 0;
        self.reasons.clear();
        self.recall = None;
    }

    /// Counts `n` failed answers that gave `reason`; past [`MAX_REASONS`] distinct texts,
    /// under [`OTHER_REASONS`].
    pub fn note_reasons(&mut self, reason: &str, n: u64) {
        if let Some(count) = self.reasons.get_mut(reason) {
            *count += n;
        } else if self.reasons.len() < MAX_REASONS {
            self.reasons.insert(reason.to_string(), n);
        } else {
            *self.reasons.entry(OTHER_REASONS.to_string()).or_default() += n;
        }
    }

    /// Counts an arrival of the open model that could not be sent on time.
    pub fn drop_arrival(&mut self) {
        self.dropped += 1;
    }

    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.codes.iter().sum()
    }

    /// Requests that succeeded.
    pub fn successes(&self) -> u64 {
        self.codes[Code::Ok as usize]
    }

    /// The report of these outcomes over `duration`.
    pub fn report(
        &self,
        name: &str,
        concurrency: u64,
        duration: Duration,
        server: ServerFigures,
    ) -> PhaseReport {
        let secs = duration.as_secs_f64().max(1e-9);
        PhaseReport {
            name: name.to_string(),
            concurrency,
            duration_s: duration.as_secs_f64(),
            requests: self.requests(),
            successes: self.successes(),
            qps: self.successes() as f64 / secs,
            codes: by_name(&self.codes),
            first_try_codes: by_name(&self.first_codes),
            attempts: self.attempts,
            retries: self.retries,
            retries_denied: self.retries_denied,
            dropped: self.dropped,
            latency: summarize(&self.latency),
            success_latency: summarize(&self.success_latency),
            service_time: summarize(&self.service_time),
            shed_latency: summarize(&self.shed_latency),
            latency_by_code: self
                .by_code
                .iter()
                .map(|(code, h)| (outcome_name(*code).to_string(), summarize(h)))
                .collect(),
            server,
            histograms: Histograms {
                latency: encode(&self.latency),
                success_latency: encode(&self.success_latency),
                service_time: encode(&self.service_time),
                shed_latency: encode(&self.shed_latency),
                by_code: self
                    .by_code
                    .iter()
                    .map(|(code, h)| (outcome_name(*code).to_string(), encode(h)))
                    .collect(),
                // By time, only the phase's recorder knows (`PhaseRecorder::slices`).
                slices: Vec::new(),
            },
            recall: self.recall.clone(),
            server_counts: Default::default(),
            failures: self.reasons.clone(),
            written: None,
        }
    }

    /// The outcomes behind a report (from its histograms and counts), for merging reports.
    pub fn from_report(report: &PhaseReport) -> Result<Self, String> {
        let mut outcomes = Outcomes {
            latency: decode(&report.histograms.latency)?,
            success_latency: decode(&report.histograms.success_latency)?,
            service_time: decode(&report.histograms.service_time)?,
            shed_latency: decode(&report.histograms.shed_latency)?,
            attempts: report.attempts,
            retries: report.retries,
            retries_denied: report.retries_denied,
            dropped: report.dropped,
            recall: report.recall.clone(),
            reasons: report.failures.clone(),
            ..Outcomes::default()
        };
        for (name, n) in &report.codes {
            outcomes.codes[code_index(name)?] += n;
        }
        for (name, encoded) in &report.histograms.by_code {
            outcomes.by_code.insert(code_index(name)?, decode(encoded)?);
        }
        for (name, n) in &report.first_try_codes {
            outcomes.first_codes[code_index(name)?] += n;
        }
        if outcomes.latency.len() != outcomes.requests() {
            return Err(format!(
                "phase {}: {} latencies recorded for {} requests (no histograms in this report?)",
                report.name,
                outcomes.latency.len(),
                outcomes.requests()
            ));
        }
        Ok(outcomes)
    }
}

fn code_index(name: &str) -> Result<usize, String> {
    (0..CODES)
        .find(|&i| outcome_name(i) == name)
        .ok_or_else(|| format!("unknown gRPC code {name:?}"))
}

pub(super) fn by_name(counts: &[u64; CODES]) -> BTreeMap<String, u64> {
    counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (outcome_name(i).to_string(), *n))
        .collect()
}

/// An outcome for tests: `first` then `last` code (a retry between them when they differ),
/// `ms` of latency, half of it service time.
#[cfg(test)]
pub(crate) fn outcome(first: Code, last: Code, ms: u64) -> Outcome {
    Outcome {
        first,
        last,
        attempts: if first == last { 1 } else { 2 },
        retries_denied: 0,
        latency: Duration::from_millis(ms),
        service_time: Duration::from_millis(ms / 2),
        answer_failed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_codes_and_percentiles() {
        let mut o = Outcomes::default();
        for ms in 1..=100 {
            o.record(&outcome(Code::Ok, Code::Ok, ms));
        }
        o.record(&outcome(Code::ResourceExhausted, Code::Ok, 5));
        o.record(&outcome(
            Code::ResourceExhausted,
            Code::ResourceExhausted,
            1,
        ));
        let r = o.report("p", 4, Duration::from_secs(2), ServerFigures::default());
        assert_eq!(r.requests, 102);
        assert_eq!(r.successes, 101);
        assert_eq!(r.codes["OK"], 101);
        assert_eq!(r.codes["RESOURCE_EXHAUSTED"], 1);
        assert_eq!(r.first_try_codes["RESOURCE_EXHAUSTED"], 2);
        assert_eq!(r.retries, 1);
        assert!((r.qps - 50.5).abs() < 1e-9);
        assert!(
            (r.latency.p50_ms - 50.0).abs() < 1.5,
            "{}",
            r.latency.p50_ms
        );
        assert!((r.latency.max_ms - 100.0).abs() < 0.1);
        assert_eq!(r.success_latency.count, 101);

        let mut total = Outcomes::default();
        total.merge(&o);
        total.merge(&o);
        assert_eq!(total.requests(), 204);
        assert_eq!(total.latency.len(), 204);

        // Through the report and back: nothing lost.
        let back = Outcomes::from_report(&r).expect("decode");
        assert_eq!(back.requests(), 102);
        assert_eq!(back.latency, o.latency);
        assert_eq!(back.shed_latency.len(), 1);
        assert_eq!(r.latency_by_code["OK"].count, 101);
        assert_eq!(r.latency_by_code["RESOURCE_EXHAUSTED"].count, 1);
        assert_eq!(
            back.report("p", 4, Duration::from_secs(2), ServerFigures::default()),
            r
        );
    }
}
