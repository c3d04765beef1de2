//! One phase's figures as the comparison reads them, of one run or pooled over several:
//! the latency histogram decoded from the report (`measure::histogram::decode`, as merging
//! shard reports does), the counts, the seconds and the recall counts, which add up across
//! runs without loss.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use vecrig::validation::report::{PhaseReport, RecallFigures};

use super::model::Incomparable;
use super::noise;
use super::tolerance::Metric;

/// One phase's figures, of one run or pooled over several.
#[derive(Debug, Clone)]
pub(super) struct Pooled {
    pub(super) latency: Histogram<u64>,
    /// The latencies by time, each run's slices one after another (see
    /// `measure::slices`); empty for reports without them.
    pub(super) slices: Vec<Histogram<u64>>,
    pub(super) requests: u64,
    pub(super) successes: u64,
    pub(super) duration_s: f64,
    pub(super) codes: BTreeMap<String, u64>,
    pub(super) recall: Option<RecallFigures>,
}

impl Pooled {
    pub(super) fn of(
        label: &str,
        scenario: &str,
        phase: &PhaseReport,
    ) -> Result<Self, Incomparable> {
        let latency = crate::measure::histogram::decode(&phase.histograms.latency)
            .map_err(|e| Incomparable(format!("{label}: {scenario}/{}: {e}", phase.name)))?;
        if latency.len() != phase.requests {
            return Err(Incomparable(format!(
                "{label}: {scenario}/{}: {} latencies recorded for {} requests (a report without histograms?)",
                phase.name,
                latency.len(),
                phase.requests
            )));
        }
        let slices = phase
            .histograms
            .slices
            .iter()
            .map(|s| crate::measure::histogram::decode_as_recorded(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Incomparable(format!("{label}: {scenario}/{} slices: {e}", phase.name)))?;
        Ok(Self {
            latency,
            slices,
            requests: phase.requests,
            successes: phase.successes,
            duration_s: phase.duration_s,
            codes: phase.codes.clone(),
            recall: phase.recall.clone().filter(|r| r.queries > 0),
        })
    }

    pub(super) fn add(&mut self, other: &Pooled) {
        // Both histograms have the loadgen's bounds (stats::decode), so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.slices.extend(other.slices.iter().cloned());
        self.requests += other.requests;
        self.successes += other.successes;
        self.duration_s += other.duration_s;
        for (code, n) in &other.codes {
            *self.codes.entry(code.clone()).or_default() += n;
        }
        self.recall = match (self.recall.take(), &other.recall) {
            (Some(mut mine), Some(theirs)) => {
                mine.merge(theirs);
                Some(mine)
            }
            (mine, theirs) => mine.or_else(|| theirs.clone()),
        };
    }

    fn code(&self, name: &str) -> u64 {
        self.codes.get(name).copied().unwrap_or(0)
    }

    /// The count behind a rate metric.
    pub(super) fn count(&self, metric: &Metric) -> u64 {
        match metric {
            Metric::ErrorRate => self.requests - self.successes.min(self.requests),
            Metric::ShedRate => self.code("RESOURCE_EXHAUSTED"),
            Metric::CodeRate(code) => self.code(code),
            _ => 0,
        }
    }

    pub(super) fn value(&self, metric: &Metric) -> Option<f64> {
        match metric {
            Metric::Percentile(p) => noise::percentile(&self.latency, *p),
            Metric::Goodput => {
                (self.duration_s > 0.0).then(|| self.successes as f64 / self.duration_s)
            }
            Metric::ErrorRate | Metric::ShedRate | Metric::CodeRate(_) => {
                (self.requests > 0).then(|| self.count(metric) as f64 / self.requests as f64)
            }
            Metric::Recall => self.recall.as_ref().map(RecallFigures::mean),
        }
    }
}
