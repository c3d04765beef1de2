//! The comparison as a person reads it in a terminal: per scenario, one row per phase and
//! metric (baseline, new, change, verdict, the tolerance and the noise behind the verdict),
//! then the regressions by name.

use std::fmt::Write;

use super::model::{Change, Comparison, Verdict};

/// A value in its metric's terms: latencies and goodput as numbers, rates as percentages,
/// recall as a fraction.
pub(super) fn value(c: &Change, v: f64) -> String {
    match (c.unit.as_str(), c.metric.as_str()) {
        ("ms", _) if v >= 100.0 => format!("{v:.0}"),
        ("ms", _) if v >= 10.0 => format!("{v:.1}"),
        ("ms", _) => format!("{v:.2}"),
        ("", "recall") => format!("{v:.4}"),
        ("", _) => format!("{:.2}%", v * 100.0),
        _ => format!("{v:.1}"),
    }
}

/// The change: relative for latencies and goodput, percentage points for rates, absolute
/// for recall.
pub(super) fn change(c: &Change) -> String {
    match (c.unit.as_str(), c.metric.as_str()) {
        ("", "recall") => format!("{:+.4}", c.change),
        ("", _) => format!("{:+.2}pp", c.change * 100.0),
        _ => c.relative.map_or_else(
            || format!("{:+.2}", c.change),
            |r| format!("{:+.1}%", r * 100.0),
        ),
    }
}

fn marker(v: Verdict) -> &'static str {
    match v {
        Verdict::Worse => "WORSE",
        Verdict::Better => "better",
        Verdict::Same => "same",
    }
}

/// The whole comparison as text.
pub fn render(comparison: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncompare: {} against {} (noise: {})",
        comparison.new,
        comparison.baselines.join(", "),
        comparison.noise_model
    );
    for s in &comparison.scenarios {
        let _ = writeln!(out, "\n== {} ==", s.name);
        let _ = writeln!(
            out,
            "  {:<16} {:<16} {:>10} {:>10} {:>9}  {:<7} {:<20} noise",
            "phase", "metric", "base", "new", "change", "verdict", "tolerance"
        );
        for p in &s.phases {
            for c in &p.changes {
                let metric = if c.unit.is_empty() {
                    c.metric.clone()
                } else {
                    format!("{} {}", c.metric, c.unit)
                };
                let _ = writeln!(
                    out,
                    "  {:<16} {:<16} {:>10} {:>10} {:>9}  {:<7} {:<20} {}{}",
                    p.name,
                    metric,
                    value(c, c.base),
                    value(c, c.new),
                    change(c),
                    marker(c.verdict),
                    c.tolerance,
                    if c.noise.beyond {
                        "beyond: "
                    } else {
                        "within: "
                    },
                    c.noise.detail
                );
            }
            for note in &p.notes {
                let _ = writeln!(out, "  {:<16} {note}", p.name);
            }
        }
    }
    let compared: usize = comparison
        .scenarios
        .iter()
        .flat_map(|s| &s.phases)
        .map(|p| p.changes.len())
        .sum();
    if comparison.regressed() {
        let _ = writeln!(
            out,
            "\nREGRESSION: {} of {compared} changes worse beyond tolerance and noise:",
            comparison.regressions.len()
        );
        for r in &comparison.regressions {
            let _ = writeln!(out, "  {r}");
        }
    } else {
        let _ = writeln!(
            out,
            "\nno regression: {compared} changes compared, {} better",
            comparison.improvements.len()
        );
    }
    for r in &comparison.improvements {
        let _ = writeln!(out, "  better: {r}");
    }
    out
}
