//! Comparing runs: did a change make the target slower, less available or less accurate?
//! `vecrig-loadgen compare BASE.json [BASE2.json ...] NEW.json`, and `--baseline` on a run.
//!
//! Per scenario and phase (and a scenario's totals when it has several phases), each metric
//! of the new run against the baselines: latency percentiles (from the histograms, never
//! averaged), goodput, the error, shed and per-code rates, and recall. A change is `worse`
//! or `better` only when it exceeds both its tolerance ([`tolerance`]: `p99+10%`,
//! `recall-0.01`, per metric and per phase) and the noise ([`noise`]: the baselines' own
//! spread when there are two or more, a statistical test on the two runs' samples when there
//! is one). [`judge`] does the comparing into a [`Comparison`] ([`model`], the JSON of
//! `--out`, schema [`SCHEMA`]); [`table`] prints it and [`html`] draws it.
//!
//! The rooms: `model` is a leaf every other reads; `tolerance` and `noise` know nothing of
//! reports' layout; `pooled` reads a phase of a report (or several) into the figures judged;
//! `judge` checks comparability and fills the model; this module reads files and writes
//! outputs.

pub mod html;
pub mod judge;
pub mod model;
pub mod noise;
mod pooled;
pub mod table;
pub mod tolerance;

use std::path::{Path, PathBuf};

use vecrig::validation::report::{self, Report};

pub use judge::{Named, compare, compare_runs};
pub use model::{Comparison, Incomparable, SCHEMA, Verdict};
pub use tolerance::{Tolerance, Tolerances};

/// What a comparison came to: the exit code's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No change worse beyond its tolerance and the noise.
    NoRegression,
    /// At least one.
    Regression,
    /// The reports could not be read or compared (said why on stderr).
    Incomparable,
}

/// Where to write the comparison besides the terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs<'a> {
    /// `--out`: the JSON.
    pub json: Option<&'a Path>,
    /// `--html`: the page.
    pub html: Option<&'a Path>,
}

/// Reads a JSON report, checking its schema before its fields so that a report of another
/// version is named as such rather than failing on a field.
pub fn read_report(path: &Path) -> Result<Report, Incomparable> {
    let fail = |reason: String| Incomparable(format!("{}: {reason}", path.display()));
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(report::SCHEMA) => {}
        Some(other) => {
            return Err(fail(format!(
                "schema {other:?}, expected {:?}",
                report::SCHEMA
            )));
        }
        None => return Err(fail("not a vecrig-loadgen report (no schema)".into())),
    }
    serde_json::from_value(value).map_err(|e| fail(format!("not a vecrig-loadgen report: {e}")))
}

/// Reads several reports, each with its path as its name.
pub fn read_reports(paths: &[PathBuf]) -> Result<Vec<(String, Report)>, Incomparable> {
    paths
        .iter()
        .map(|p| read_report(p).map(|r| (p.display().to_string(), r)))
        .collect()
}

/// The tolerances of `VECRIG_TOLERANCE` (comma-separated), for a run with `--baseline`:
/// the `compare` subcommand reads the same variable through its `--tolerance` flag.
pub fn tolerances_from_env() -> Result<Vec<Tolerance>, tolerance::ParseError> {
    std::env::var("VECRIG_TOLERANCE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect()
}

/// Compares the runs under test (`news`, pooled) with the baselines, prints the table, writes
/// the outputs, and says what it came to.
pub fn gate(
    baselines: &[(String, Report)],
    news: &[(&str, &Report)],
    tolerances: Vec<Tolerance>,
    outputs: Outputs<'_>,
) -> Outcome {
    let named: Vec<Named<'_>> = baselines
        .iter()
        .map(|(name, report)| Named { name, report })
        .collect();
    let news: Vec<Named<'_>> = news
        .iter()
        .map(|&(name, report)| Named { name, report })
        .collect();
    let comparison = match compare_runs(&named, &news, &Tolerances::new(tolerances)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Outcome::Incomparable;
        }
    };
    print!("{}", table::render(&comparison));
    if let Err(e) = write_outputs(&comparison, outputs) {
        eprintln!("error: {e}");
        return Outcome::Incomparable;
    }
    if comparison.regressed() {
        Outcome::Regression
    } else {
        Outcome::NoRegression
    }
}

fn write_outputs(comparison: &Comparison, outputs: Outputs<'_>) -> Result<(), String> {
    if let Some(path) = outputs.json {
        serde_json::to_vec_pretty(comparison)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("comparison written to {}", path.display());
    }
    if let Some(path) = outputs.html {
        std::fs::write(path, html::render(comparison))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("HTML comparison written to {}", path.display());
    }
    Ok(())
}

/// `vecrig-loadgen compare BASE.json [BASE2.json ...] NEW.json`: the last report is the new
/// run, the others its baselines; or, with `--new NEW.json` (repeatable), every report named
/// so is a run under test and the others are baselines.
pub fn command(
    paths: &[PathBuf],
    new_paths: &[PathBuf],
    tolerances: Vec<Tolerance>,
    outputs: Outputs<'_>,
) -> Outcome {
    let (base_paths, new_paths) = match paths.split_last() {
        _ if !new_paths.is_empty() => (paths, new_paths),
        Some((last, bases)) => (bases, std::slice::from_ref(last)),
        None => (paths, new_paths),
    };
    if base_paths.is_empty() {
        eprintln!("error: compare needs a baseline report and a new one");
        return Outcome::Incomparable;
    }
    let read = read_reports(base_paths).and_then(|b| Ok((b, read_reports(new_paths)?)));
    match read {
        Ok((baselines, news)) => {
            let news: Vec<(&str, &Report)> = news
                .iter()
                .map(|(name, report)| (name.as_str(), report))
                .collect();
            gate(&baselines, &news, tolerances, outputs)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Outcome::Incomparable
        }
    }
}
