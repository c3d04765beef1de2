//! A scenario's timeline for charts: answers by the second (and by the tenth of a second at
//! first), each span a small histogram and counts by outcome.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use tonic::Code;

use crate::measure::histogram::MAX_MICROS;
use crate::measure::outcomes::{CODES, by_name};

/// One second of a scenario.
#[derive(Debug)]
pub(super) struct Second {
    pub(super) latency: Histogram<u64>,
    pub(super) codes: [u64; CODES],
}

impl Second {
    pub(super) fn new() -> Self {
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

/// Where an answer goes in a [`Timeline`]: its tenth of a second from the scenario's start.
/// The timeline keeps the tenths of its first [`FINE_SPAN`] and every second; a phase's
/// [`Slices`](crate::measure::slices::Slices) keep tenths throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) tenth: usize,
}

impl Slot {
    fn second(self) -> usize {
        self.tenth / 10
    }

    /// The tenth, when the timeline charts it.
    fn fine(self) -> Option<usize> {
        (self.tenth < FINE_SPAN.as_millis() as usize / 100).then_some(self.tenth)
    }
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

    /// The tenth of a second of the timeline that `at` falls in.
    pub(super) fn slot_of(&self, at: std::time::Instant) -> Slot {
        let since = at.saturating_duration_since(self.started);
        Slot {
            tenth: (since.as_millis() / 100) as usize,
        }
    }

    /// Adds what a batch recorded.
    pub(super) fn absorb(&self, recorded: &[(Slot, Second)]) {
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
            add(&mut seconds, slot.second(), s);
        }
        drop(seconds);
        if recorded.iter().any(|(slot, _)| slot.fine().is_some()) {
            let mut tenths = self.tenths.lock().unwrap_or_else(|p| p.into_inner());
            for (slot, s) in recorded.iter() {
                if let Some(tenth) = slot.fine() {
                    add(&mut tenths, tenth, s);
                }
            }
        }
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
