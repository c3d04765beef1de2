//! What a comparison found, as the JSON of `compare --out` (schema [`SCHEMA`]) and as what the
//! table and the HTML page draw: per scenario and phase, one [`Change`] per metric with its
//! verdict, and the two latency distributions.
//!
//! A leaf module: the judge fills these types, the renderers read them, neither imports the
//! other.

use serde::{Deserialize, Serialize};

/// Identifies the comparison format and version. A field is never renamed or removed within
/// a version.
pub const SCHEMA: &str = "vecrig.loadgen.compare/v1";

/// Why reports cannot be compared: one line that names what differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot compare: {0}")]
pub struct Incomparable(pub String);

/// Whether a change matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Beyond the tolerance and the noise, in the good direction.
    Better,
    /// Within the tolerance, or within the noise.
    Same,
    /// Beyond the tolerance and the noise, in the bad direction: a regression.
    Worse,
}

impl Verdict {
    /// Its name, as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Same => "same",
            Verdict::Worse => "worse",
        }
    }
}

/// How the noise of a change was judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// The method: `quantile intervals`, `two-proportion z`, `poisson rate z` or `recall z`;
    /// with two baselines or more, `baseline range and ` before it (or `baseline range`
    /// alone where the metric has no test).
    pub method: String,
    /// Whether the change is larger than the noise by that method.
    pub beyond: bool,
    /// The method's figures, for a person: the interval or range, or the p-value.
    pub detail: String,
    /// The test's two-sided p-value, for the tests that give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

/// One metric of one phase, baseline against new.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The metric, in the tolerance vocabulary: `p99`, `goodput`, `error_rate`, `shed_rate`,
    /// `recall`, `rate:CODE`.
    pub metric: String,
    /// The unit of `base` and `new`: `ms`, `req/s`, or empty for fractions.
    pub unit: String,
    /// The baseline's value (of the merged baselines).
    pub base: f64,
    /// The new run's value.
    pub new: f64,
    /// `new - base`.
    pub change: f64,
    /// `change / base`; absent when the base is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
    /// The tolerance applied, as an expression (`p99+10%`).
    pub tolerance: String,
    /// Whether the change is larger than the tolerance allows, either way.
    pub beyond_tolerance: bool,
    /// Whether it is larger than the noise.
    pub noise: Noise,
    /// Better, same or worse.
    pub verdict: Verdict,
}

/// A latency distribution as a percentile spectrum: `(percentile, ms)` points.
pub type Spectrum = Vec<(f64, f64)>;

/// One phase (or a scenario's `total`) compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseComparison {
    /// The phase's name (`total` for a scenario's totals).
    pub name: String,
    /// Requests in the baseline (all baselines together) and in the new run.
    pub requests: (u64, u64),
    /// Each metric compared.
    pub changes: Vec<Change>,
    /// The baseline's latency distribution (merged baselines).
    pub base_latency: Spectrum,
    /// The new run's latency distribution.
    pub new_latency: Spectrum,
    /// What was not compared and why (no recall sampled in one of the runs, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One scenario compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioComparison {
    /// The scenario's name.
    pub name: String,
    /// Its phases, in order, then `total` when it has more than one.
    pub phases: Vec<PhaseComparison>,
}

/// A whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The baseline reports, as named on the command line.
    pub baselines: Vec<String>,
    /// The new report, as named.
    pub new: String,
    /// How the noise was judged: `baseline range and statistical tests` (two baselines or
    /// more) or `statistical tests` (one).
    pub noise_model: String,
    /// Each scenario, in order.
    pub scenarios: Vec<ScenarioComparison>,
    /// The changes judged worse, as `scenario/phase metric`.
    pub regressions: Vec<String>,
    /// The changes judged better, the same way.
    pub improvements: Vec<String>,
}

impl Comparison {
    /// Whether any change is a regression beyond tolerance and noise.
    pub fn regressed(&self) -> bool {
        !self.regressions.is_empty()
    }
}
