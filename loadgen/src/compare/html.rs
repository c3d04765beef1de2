//! The comparison as one self-contained HTML page (inline SVG, no scripts, nothing fetched):
//! per phase, the baseline's and the new run's latency distributions overlaid as percentile
//! spectra (the tail drawn out on a log scale, as HdrHistogram plots them), each compared
//! percentile marked with its verdict, and the table of changes.

use std::fmt::Write;

use super::model::{Comparison, PhaseComparison, Verdict};
use super::table;
use crate::report::html::{escape, nice_ceiling};

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;
const BASE_COLOUR: &str = "#8c8c8c";
const NEW_COLOUR: &str = "#1f77b4";

fn colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Worse => "#d62728",
        Verdict::Better => "#2ca02c",
        Verdict::Same => "#555555",
    }
}

/// Where a percentile goes on the x axis: `log10(1 / (1 - q))`, 0 at the minimum.
fn tail(percentile: f64) -> f64 {
    -(1.0 - (percentile / 100.0).min(0.999_99)).log10()
}

fn chart(title: &str, phase: &PhaseComparison) -> String {
    let mut svg = String::new();
    let points = phase.base_latency.iter().chain(&phase.new_latency);
    let x_max = points
        .clone()
        .map(|p| tail(p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_max = nice_ceiling(points.map(|p| p.1).fold(0.0f64, f64::max));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |p: f64| LEFT + tail(p) / x_max * plot_w;
    let sy = |ms: f64| TOP + plot_h - (ms / y_max).min(1.0) * plot_h;
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><text x="{LEFT}" y="18" class="title">{t}</text>"#,
        t = escape(title)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{label} ms</text>"#,
            x2 = WIDTH - RIGHT,
            y = sy(v),
            tx = LEFT - 6.0,
            ty = sy(v) + 4.0,
            label = vecrig::validation::threshold::rounded(v)
        );
    }
    for k in 0..=(x_max as usize) {
        // min, p90, p99, p99.9, ...: one more nine per step.
        let (percentile, label) = match k {
            0 => (0.0, "min".to_string()),
            1 => (90.0, "p90".to_string()),
            k => (
                100.0 * (1.0 - 10f64.powi(-(k as i32))),
                format!("p99.{}", "9".repeat(k - 2))
                    .trim_end_matches('.')
                    .to_string(),
            ),
        };
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{label}</text>"#,
            x = sx(percentile),
            y = HEIGHT - BOTTOM + 16.0,
        );
    }
    for (points, colour) in [
        (&phase.base_latency, BASE_COLOUR),
        (&phase.new_latency, NEW_COLOUR),
    ] {
        let path: Vec<String> = points
            .iter()
            .map(|(p, ms)| format!("{:.1},{:.1}", sx(*p), sy(*ms)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"/>"#,
            path.join(" ")
        );
    }
    // Each compared percentile: a line at it, coloured and labelled by its verdict.
    for c in phase.changes.iter().filter(|c| c.unit == "ms") {
        let Some(p) = c
            .metric
            .strip_prefix('p')
            .and_then(|p| p.parse::<f64>().ok())
        else {
            continue;
        };
        let x = sx(p);
        let label = format!(
            "{} {}{}",
            c.metric,
            c.relative
                .map(|r| format!("{:+.0}% ", r * 100.0))
                .unwrap_or_default(),
            c.verdict.name()
        );
        let _ = write!(
            svg,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{y2:.1}" stroke="{c}" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty:.1}" class="tick" fill="{c}" transform="rotate(-90 {tx:.1} {ty:.1})">{label}</text>"#,
            y2 = TOP + plot_h,
            c = colour(c.verdict),
            tx = x - 3.0,
            ty = TOP + plot_h - 4.0,
            label = escape(&label)
        );
    }
    for (i, (name, colour)) in [("baseline", BASE_COLOUR), ("new", NEW_COLOUR)]
        .iter()
        .enumerate()
    {
        let lx = LEFT + 8.0 + i as f64 * 120.0;
        let ly = HEIGHT - 6.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{ry}" width="14" height="4" fill="{colour}"/><text x="{tx}" y="{ly}" class="tick">{name}</text>"#,
            ry = ly - 5.0,
            tx = lx + 18.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The page.
pub fn render(comparison: &Comparison) -> String {
    let mut page = String::from(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>vecrig comparison</title><style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}
td:first-child,th:first-child{text-align:left}
.worse{color:#d62728;font-weight:bold}.better{color:#2ca02c;font-weight:bold}.same{color:#555}
.title{font-size:14px;font-weight:600}.tick{font-size:11px;fill:#444}.grid{stroke:#ddd}
</style></head><body>
"#,
    );
    let verdict = if comparison.regressed() {
        format!(
            r#"<p class="worse">REGRESSION: {} changes worse beyond tolerance and noise</p><ul>"#,
            comparison.regressions.len()
        )
    } else {
        r#"<p class="better">No regression</p><ul>"#.to_string()
    };
    let _ = write!(
        page,
        "<h1>{} against {}</h1><p>Noise judged by {}.</p>{verdict}",
        escape(&comparison.new),
        escape(&comparison.baselines.join(", ")),
        escape(&comparison.noise_model)
    );
    for r in &comparison.regressions {
        let _ = write!(page, "<li>{}</li>", escape(r));
    }
    page.push_str("</ul>");
    for s in &comparison.scenarios {
        let _ = write!(page, "<h2>{}</h2>", escape(&s.name));
        for p in &s.phases {
            page.push_str(&chart(&format!("{} / {}: latency", s.name, p.name), p));
            page.push_str("<table><tr><th>metric</th><th>base</th><th>new</th><th>change</th><th>verdict</th><th>tolerance</th><th>noise</th></tr>");
            for c in &p.changes {
                let _ = write!(
                    page,
                    r#"<tr><td>{m} {u}</td><td>{b}</td><td>{n}</td><td>{ch}</td><td class="{v}">{v}</td><td>{t}</td><td>{noise}</td></tr>"#,
                    m = escape(&c.metric),
                    u = escape(&c.unit),
                    b = escape(&table::value(c, c.base)),
                    n = escape(&table::value(c, c.new)),
                    ch = escape(&table::change(c)),
                    v = c.verdict.name(),
                    t = escape(&c.tolerance),
                    noise = escape(&format!("{}: {}", c.noise.method, c.noise.detail))
                );
            }
            page.push_str("</table>");
            for note in &p.notes {
                let _ = write!(page, "<p>{}</p>", escape(note));
            }
        }
    }
    page.push_str("</body></html>\n");
    page
}
