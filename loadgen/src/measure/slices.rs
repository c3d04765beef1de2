//! A phase's latencies by when they were answered: consecutive slices of equal width, a tenth
//! of a second at first, the width doubled (neighbours merged in pairs) whenever the phase
//! outgrows [`MOST`] slices, so that a phase of any length keeps at most 64 small histograms.
//! A comparison reads them to see how far the run's own latencies wander from one stretch of
//! time to the next (`compare::noise::dispersion`): a hiccup of the machine shows as a few
//! slices unlike the rest, where the phase's one histogram cannot tell it from a change.

use hdrhistogram::Histogram;

use crate::measure::histogram::encode;
use crate::measure::timeline::{Second, Slot};

/// The most slices a phase keeps.
pub const MOST: usize = 64;

/// A phase's latencies by tenths of a second (or wider, see the module's doc).
#[derive(Debug)]
pub struct Slices {
    /// The tenth of the scenario in which the phase started.
    first: usize,
    /// Tenths of a second per slice: a power of two.
    width: usize,
    spans: Vec<Histogram<u64>>,
}

impl Slices {
    /// No answers yet, for a phase that started in `first`.
    pub(super) fn from(first: Slot) -> Self {
        Self {
            first: first.tenth,
            width: 1,
            spans: Vec::new(),
        }
    }

    /// Adds what a sending thread recorded, by tenth of a second.
    pub(super) fn absorb(&mut self, recorded: &[(Slot, Second)]) {
        for (slot, second) in recorded {
            if second.latency.is_empty() {
                continue;
            }
            let since = slot.tenth.saturating_sub(self.first);
            while since / self.width >= MOST {
                self.widen();
            }
            let at = since / self.width;
            while self.spans.len() <= at {
                self.spans.push(Second::new().latency);
            }
            // Same bounds on both sides: adding cannot fail.
            let _ = self.spans[at].add(&second.latency);
        }
    }

    /// Doubles the width: slice `j` becomes the old `2j` and `2j + 1`, which cover exactly
    /// its span since every slice counts from the phase's first tenth.
    fn widen(&mut self) {
        let mut merged = Vec::with_capacity(MOST / 2 + 1);
        for pair in self.spans.chunks(2) {
            let mut slice = pair[0].clone();
            if let Some(next) = pair.get(1) {
                let _ = slice.add(next);
            }
            merged.push(slice);
        }
        self.spans = merged;
        self.width *= 2;
    }

    /// The slices in HdrHistogram's standard form, in order (empty ones included: a stretch
    /// in which nothing was answered is part of the record).
    pub fn encoded(&self) -> Vec<String> {
        self.spans.iter().map(encode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenth(tenth: usize, values: &[u64]) -> (Slot, Second) {
        let mut second = Second::new();
        for &v in values {
            second.latency.record(v).expect("in bounds");
        }
        (Slot { tenth }, second)
    }

    #[test]
    fn answers_land_in_their_tenth_from_the_phases_start() {
        let mut slices = Slices::from(Slot { tenth: 30 });
        slices.absorb(&[tenth(30, &[100, 200]), tenth(32, &[300])]);
        slices.absorb(&[tenth(31, &[400])]);
        let counts: Vec<u64> = slices.spans.iter().map(Histogram::len).collect();
        assert_eq!(counts, [2, 1, 1]);
        assert_eq!(slices.encoded().len(), 3);
    }

    #[test]
    fn a_long_phase_keeps_at_most_64_slices_of_equal_width_and_every_answer() {
        let mut slices = Slices::from(Slot { tenth: 0 });
        // 100 s of one answer a tenth, plus a burst of 10 in tenth 555.
        for t in 0..1000 {
            slices.absorb(&[tenth(t, &[1000 + t as u64])]);
        }
        slices.absorb(&[tenth(555, &[5000; 10])]);
        assert!(slices.spans.len() <= MOST && slices.spans.len() > MOST / 2);
        assert_eq!(slices.width, 16);
        assert_eq!(slices.spans.iter().map(Histogram::len).sum::<u64>(), 1010);
        // Slice 34 covers tenths 544..560: 16 answers and the burst.
        assert_eq!(slices.spans[34].len(), 26);
        assert_eq!(slices.spans[33].len(), 16);
    }
}
