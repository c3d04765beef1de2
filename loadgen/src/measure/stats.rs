//! Recording outcomes: HdrHistograms of latency (never growing lists) and counts by gRPC code,
//! per phase, turned into report summaries at the end.
//!
//! Nothing on the request path takes a shared lock: each sending thread records into its own
//! [`Batch`] (plain fields, no atomics), and hands it to the phase's shared [`Recorder`] every
//! second and when the phase ends. Live progress, the monitor line and `--abort-on-fail` read
//! that merged view, which is therefore at most a second old.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use tonic::Code;
use vecrig::validation::report::{
    ANSWER_ERROR, Histograms, LatencySummary, PhaseReport, RecallFigures, ServerFigures, code_name,
};

/// Largest latency recorded exactly: one hour, in microseconds. Larger values saturate.
const MAX_MICROS: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

/// All outcomes, indexable by `Code as usize` for the 17 gRPC codes, then [`ANSWER_FAILED`].
const CODES: usize = 18;

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
    dropped: u64,
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
    fn last_index(&self) -> usize {
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

/// A histogram in HdrHistogram's standard form: V2 deflate, base64.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut bytes) {
        Ok(_) => BASE64.encode(bytes),
        Err(_) => String::new(),
    }
}

/// The inverse of [`encode`]; an empty string is an empty histogram.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    if text.is_empty() {
        return Ok(histogram());
    }
    let bytes = BASE64
        .decode(text)
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    let decoded: Histogram<u64> = Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| format!("histogram does not decode: {e:?}"))?;
    let mut h = histogram();
    h.add(&decoded)
        .map_err(|e| format!("histogram out of range: {e:?}"))?;
    Ok(h)
}

fn by_name(counts: &[u64; CODES]) -> BTreeMap<String, u64> {
    counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (outcome_name(i).to_string(), *n))
        .collect()
}

/// Percentiles of a microsecond histogram, in milliseconds.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// One second of a scenario.
#[derive(Debug)]
struct Second {
    latency: Histogram<u64>,
    codes: [u64; CODES],
}

impl Second {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 2)
                .expect("static histogram bounds are valid"),
            codes: [0; CODES],
        }
    }
}

/// A scenario's second-by-second record, for charts: small histograms (2 significant digits),
/// one per second, by the time answers arrive; and for its first [`FINE_SPAN`] a record by
/// tenths of a second, so that a short scenario still draws a line.
#[derive(Debug)]
pub struct Timeline {
    started: std::time::Instant,
    seconds: Mutex<Vec<Second>>,
    tenths: Mutex<Vec<Second>>,
}

/// How long the tenth-of-a-second record covers: a scenario shorter than this is charted
/// from it (at most 100 small histograms).
pub const FINE_SPAN: std::time::Duration = std::time::Duration::from_secs(10);

/// Where an answer goes in a [`Timeline`]: its second, and its tenth while within the
/// timeline's [`FINE_SPAN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    second: usize,
    tenth: Option<usize>,
}

impl Timeline {
    /// A timeline starting now.
    pub fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            seconds: Mutex::new(Vec::new()),
            tenths: Mutex::new(Vec::new()),
        }
    }

    /// The second (and tenth) of the timeline that `at` falls in.
    fn slot_of(&self, at: std::time::Instant) -> Slot {
        let since = at.saturating_duration_since(self.started);
        Slot {
            second: since.as_secs() as usize,
            tenth: (since < FINE_SPAN).then_some((since.as_millis() / 100) as usize),
        }
    }

    /// Adds what a batch recorded.
    fn absorb(&self, recorded: &mut Vec<(Slot, Second)>) {
        if recorded.is_empty() {
            return;
        }
        let add = |into: &mut Vec<Second>, at: usize, s: &Second| {
            while into.len() <= at {
                into.push(Second::new());
            }
            let into = &mut into[at];
            let _ = into.latency.add(&s.latency);
            for (total, n) in into.codes.iter_mut().zip(s.codes) {
                *total += n;
            }
        };
        let mut seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, s) in recorded.iter() {
            add(&mut seconds, slot.second, s);
        }
        drop(seconds);
        if recorded.iter().any(|(slot, _)| slot.tenth.is_some()) {
            let mut tenths = self.tenths.lock().unwrap_or_else(|p| p.into_inner());
            for (slot, s) in recorded.iter() {
                if let Some(tenth) = slot.tenth {
                    add(&mut tenths, tenth, s);
                }
            }
        }
        recorded.clear();
    }

    /// The timeline as report points, one a second.
    pub fn points(&self) -> Vec<vecrig::validation::report::TimePoint> {
        let seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        as_points(&seconds, 1.0)
    }

    /// The first [`FINE_SPAN`] as report points, one a tenth of a second.
    pub fn fine_points(&self) -> Vec<vecrig::validation::report::TimePoint> {
        let tenths = self.tenths.lock().unwrap_or_else(|p| p.into_inner());
        as_points(&tenths, 0.1)
    }
}

/// Report points from recorded spans of `width_s` seconds each.
fn as_points(spans: &[Second], width_s: f64) -> Vec<vecrig::validation::report::TimePoint> {
    spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ms = |v: u64| v as f64 / 1000.0;
            let mut errors = by_name(&s.codes);
            errors.remove("OK");
            vecrig::validation::report::TimePoint {
                // Rounded, so tenths read 0.3, not 0.30000000000000004.
                t_s: (i as f64 * width_s * 10.0).round() / 10.0,
                requests: s.codes.iter().sum(),
                successes: s.codes[Code::Ok as usize],
                errors,
                p50_ms: ms(s.latency.value_at_quantile(0.5)),
                p99_ms: ms(s.latency.value_at_quantile(0.99)),
                max_ms: ms(s.latency.max()),
            }
        })
        .collect()
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

/// What one sending thread recorded since it last handed its record over: owned by that
/// thread alone, so recording a request takes no lock and touches no shared cache line.
#[derive(Debug, Default)]
pub struct Batch {
    outcomes: Outcomes,
    /// `(where in the scenario, what was answered there)`, in order; a batch spans a second
    /// or two (a tenth of a second each in the scenario's first [`FINE_SPAN`]).
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
/// progress and mid-run judging read.
#[derive(Debug, Default)]
pub struct Recorder {
    outcomes: Mutex<Outcomes>,
    timeline: Option<std::sync::Arc<Timeline>>,
}

impl Recorder {
    /// A recorder that also feeds the scenario's `timeline`.
    pub fn with_timeline(timeline: std::sync::Arc<Timeline>) -> Self {
        Self {
            outcomes: Mutex::default(),
            timeline: Some(timeline),
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
            timeline.absorb(&mut batch.seconds);
        }
        batch.seconds.clear();
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
    use super::*;

    fn outcome(first: Code, last: Code, ms: u64) -> Outcome {
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

    #[test]
    fn batches_flushed_from_threads_add_up() {
        let timeline = std::sync::Arc::new(Timeline::new());
        let recorder = std::sync::Arc::new(Recorder::with_timeline(timeline.clone()));
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
