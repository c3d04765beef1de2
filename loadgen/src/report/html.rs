//! The HTML report: one self-contained page (inline SVG, no scripts, nothing fetched) with,
//! per scenario, the verdict, the phase table, the thresholds, and charts of throughput,
//! latency percentiles over time, outcomes by gRPC code, and the server's in-flight, queue,
//! shedding and memory over time.

use std::fmt::Write;

use vecrig::validation::report::{Report, ScenarioReport};

const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;

/// `text` made safe inside HTML text and attribute values.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round number at or above `v`, so axis ticks read well.
pub(crate) fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= v {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// An axis value rounded as a person writes it (`11,725`, `0.6`), with its unit.
fn format_tick(v: f64, unit: &str) -> String {
    let number = vecrig::validation::threshold::rounded(v);
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

/// How a series is drawn: as what it measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Draw {
    /// A value per time bucket, every bucket present: a line through the buckets' middles.
    Line,
    /// The same, dashed: a second reading of the same measure (max beside p99).
    Dashed,
    /// Samples, each the peak or rate of the interval since the sample before: a dot at each
    /// sample, and the value held across the interval it covers. No line is drawn across an
    /// interval that was not measured at a finer grain.
    Intervals,
    /// Samples of an instantaneous value: a dot at each, joined by a thin line.
    Samples,
}

/// One series of a chart: its name, its colour, how it is drawn, its (seconds, value) points.
type Series<'a> = (&'a str, &'a str, Draw, Vec<(f64, f64)>);

/// A chart of `series` against seconds from 0 to `x_max`: one time axis for every chart of a
/// scenario, whatever span each series covers.
fn line_chart(title: &str, unit: &str, x_max: f64, series: &[Series<'_>]) -> String {
    let mut svg = String::new();
    // Short units go on every tick (`12 ms`); long ones only on the axis label.
    let tick_unit = if unit.len() <= 3 { unit } else { "" };
    let x_max = series
        .iter()
        .flat_map(|(_, _, _, p)| p.iter().map(|(x, _)| *x))
        .fold(x_max.max(0.1), f64::max);
    let y_max = nice_ceiling(
        series
            .iter()
            .flat_map(|(_, _, _, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| TOP + plot_h - (y / y_max).min(1.0) * plot_h;
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><text x="{LEFT}" y="18" class="title">{t}</text>"#,
        t = escape(title)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = sy(v);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{label}</text>"#,
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            label = escape(&format_tick(v, tick_unit))
        );
    }
    let step = nice_ceiling(x_max / 8.0);
    let mut v = 0.0;
    while v <= x_max + 1e-9 {
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{t}</text>"#,
            t = format_tick(v, "s"),
            x = sx(v),
            y = HEIGHT - BOTTOM + 16.0
        );
        v += step;
    }
    let _ = write!(
        svg,
        r#"<text x="12" y="{y}" class="tick" transform="rotate(-90 12 {y})" text-anchor="middle">{u}</text>"#,
        y = TOP + plot_h / 2.0,
        u = escape(unit)
    );
    for (i, (name, colour, draw, points)) in series.iter().enumerate() {
        let polyline = |svg: &mut String, path: &[(f64, f64)], style: &str| {
            let path: Vec<String> = path
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" {style}/>"#,
                path.join(" ")
            );
        };
        match draw {
            _ if points.is_empty() => {}
            Draw::Line => polyline(&mut svg, points, r#"stroke-width="1.8""#),
            Draw::Dashed => polyline(
                &mut svg,
                points,
                r#"stroke-width="1.4" stroke-dasharray="5 3""#,
            ),
            Draw::Samples => polyline(&mut svg, points, r#"stroke-width="1""#),
            Draw::Intervals => {
                // Each sample's value across the interval since the sample before it.
                let mut steps = Vec::with_capacity(points.len() * 2);
                let mut from = 0.0;
                for &(x, y) in points {
                    steps.push((from, y));
                    steps.push((x, y));
                    from = x;
                }
                polyline(
                    &mut svg,
                    &steps,
                    r#"stroke-width="1.4" stroke-opacity="0.7""#,
                );
            }
        }
        if matches!(draw, Draw::Intervals | Draw::Samples) {
            for (x, y) in points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    sx(*x),
                    sy(*y)
                );
            }
        }
        let lx = LEFT + 8.0 + i as f64 * 150.0;
        let ly = HEIGHT - 6.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{ry}" width="12" height="4" fill="{colour}"/><text x="{tx}" y="{ly}" class="tick">{n}</text>"#,
            ry = ly - 6.0,
            tx = lx + 16.0,
            n = escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars of outcomes by code.
fn outcome_bars(scenario: &ScenarioReport) -> String {
    let codes = &scenario.total.codes;
    let max = codes.values().copied().max().unwrap_or(1).max(1) as f64;
    let row = 26.0;
    let height = TOP + row * codes.len().max(1) as f64 + 8.0;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="outcomes"><text x="{LEFT}" y="18" class="title">Outcomes by gRPC code (final, after retries)</text>"#
    );
    for (i, (code, n)) in codes.iter().enumerate() {
        let y = TOP + i as f64 * row;
        let w = (*n as f64 / max) * (WIDTH - 260.0);
        let colour = match code.as_str() {
            "OK" => "#2b8a3e",
            "RESOURCE_EXHAUSTED" => "#e67700",
            "DEADLINE_EXCEEDED" | "CANCELLED" | "UNAVAILABLE" => "#5f3dc4",
            _ => "#c92a2a",
        };
        let _ = write!(
            svg,
            r#"<text x="176" y="{ty}" class="tick" text-anchor="end">{c}</text><rect x="184" y="{y}" width="{w:.1}" height="18" fill="{colour}"/><text x="{nx:.1}" y="{ty}" class="tick">{n}</text>"#,
            ty = y + 13.0,
            c = escape(code),
            nx = 190.0 + w
        );
    }
    svg.push_str("</svg>");
    svg
}

fn scenario_section(out: &mut String, s: &ScenarioReport) {
    let verdict = if s.passed { "passed" } else { "failed" };
    let _ = write!(
        out,
        r#"<section><h2>{name} <span class="{verdict}">{verdict}</span></h2><p>{desc} &middot; {dur:.1} s</p>"#,
        name = escape(&s.name),
        desc = escape(&s.description),
        dur = s.duration_s
    );
    out.push_str("<table><tr><th>phase</th><th>users</th><th>requests</th><th>ok</th><th>ok/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>shed</th><th>dropped</th><th>recall@k mean / worst 5%</th></tr>");
    let mut phases: Vec<_> = s.phases.iter().collect();
    if s.phases.len() > 1 {
        phases.push(&s.total);
    }
    for p in phases {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.name),
            p.concurrency,
            p.requests,
            p.success_rate() * 100.0,
            p.qps,
            p.latency.p50_ms,
            p.latency.p90_ms,
            p.latency.p99_ms,
            p.latency.p999_ms,
            p.latency.max_ms,
            p.code("RESOURCE_EXHAUSTED"),
            p.dropped,
            p.recall.as_ref().filter(|r| r.queries > 0).map_or_else(
                || "&ndash;".to_string(),
                |r| format!(
                    "{:.3} / {:.3} ({})",
                    r.mean(),
                    r.worst_5_percent(),
                    r.queries
                )
            )
        );
    }
    out.push_str(
        "</table><table><tr><th>threshold</th><th>scope</th><th>observed</th><th></th></tr>",
    );
    for t in &s.thresholds {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="{c}">{c}</td></tr>"#,
            escape(&t.expression),
            escape(&t.scope),
            escape(&t.observed_text()),
            c = if t.passed { "passed" } else { "failed" }
        );
    }
    out.push_str("</table>");
    for w in &s.warnings {
        let _ = write!(out, r#"<p class="warning">warning: {}</p>"#, escape(w));
    }
    // A scenario shorter than 10 s is charted by tenths of a second (one point a second
    // would be no line at all for a sub-second scenario); its counts are scaled to rates.
    let (timeline, width_s) = if s.fine_timeline.is_empty() {
        (&s.timeline, 1.0)
    } else {
        (&s.fine_timeline, 0.1)
    };
    let at = |t: f64| t + width_s / 2.0;
    let rate = |n: u64| n as f64 / width_s;
    let ok: Vec<(f64, f64)> = timeline
        .iter()
        .map(|p| (at(p.t_s), rate(p.successes)))
        .collect();
    let shed: Vec<(f64, f64)> = timeline
        .iter()
        .map(|p| {
            (
                at(p.t_s),
                rate(*p.errors.get("RESOURCE_EXHAUSTED").unwrap_or(&0)),
            )
        })
        .collect();
    let other: Vec<(f64, f64)> = timeline
        .iter()
        .map(|p| {
            let n: u64 = p
                .errors
                .iter()
                .filter(|(c, _)| c.as_str() != "RESOURCE_EXHAUSTED")
                .map(|(_, n)| n)
                .sum();
            (at(p.t_s), rate(n))
        })
        .collect();
    let span = s.duration_s;
    out.push_str(&line_chart(
        "Throughput: answers per second",
        "per second",
        span,
        &[
            ("ok", "#2b8a3e", Draw::Line, ok),
            ("shed", "#e67700", Draw::Line, shed),
            ("other errors", "#c92a2a", Draw::Line, other),
        ],
    ));
    let lat = |f: fn(&vecrig::validation::report::TimePoint) -> f64| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter(|p| p.requests > 0)
            .map(|p| (at(p.t_s), f(p)))
            .collect()
    };
    out.push_str(&line_chart(
        if width_s < 1.0 {
            "Latency from intended send time, per tenth of a second"
        } else {
            "Latency from intended send time, per second"
        },
        "ms",
        span,
        &[
            ("p50", "#1971c2", Draw::Line, lat(|p| p.p50_ms)),
            ("p99", "#c2255c", Draw::Line, lat(|p| p.p99_ms)),
            ("max", "#343a40", Draw::Dashed, lat(|p| p.max_ms)),
        ],
    ));
    out.push_str(&outcome_bars(s));
    let server = &s.server_timeline;
    // Samples taken at phase boundaries come close together; rates need a real interval.
    let mut shed_rate = Vec::new();
    let mut last = server.first();
    for point in server.iter().skip(1) {
        let Some(prev) = last else { break };
        let dt = point.t_s - prev.t_s;
        if dt < 0.5 {
            continue;
        }
        shed_rate.push((
            point.t_s,
            point.shed_total.saturating_sub(prev.shed_total) as f64 / dt,
        ));
        last = Some(point);
    }
    let series = |f: fn(&vecrig::validation::report::ServerPoint) -> f64| -> Vec<(f64, f64)> {
        server.iter().map(|p| (p.t_s, f(p))).collect()
    };
    out.push_str(&line_chart(
        "Server (from Stats): peak requests in flight and queued since the sample before",
        "requests",
        span,
        &[
            (
                "in flight",
                "#1971c2",
                Draw::Intervals,
                series(|p| p.in_flight as f64),
            ),
            (
                "queued",
                "#5f3dc4",
                Draw::Intervals,
                series(|p| p.queued as f64),
            ),
        ],
    ));
    out.push_str(&line_chart(
        "Server (from Stats): requests shed per second since the sample before",
        "per second",
        span,
        &[("shed/s", "#e67700", Draw::Intervals, shed_rate)],
    ));
    out.push_str(&line_chart(
        "Server resident memory, as sampled",
        "MB",
        span,
        &[(
            "rss",
            "#0b7285",
            Draw::Samples,
            server
                .iter()
                .map(|p| (p.t_s, p.rss_bytes as f64 / 1e6))
                .collect(),
        )],
    ));
    out.push_str("</section>");
}

/// The whole report as one HTML page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let verdict = if report.passed { "passed" } else { "failed" };
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vecrig report: {target}</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1140px;padding:0 16px;color:#212529}}
h1{{font-size:22px}}h2{{font-size:18px;margin-top:36px;border-bottom:1px solid #dee2e6}}
table{{border-collapse:collapse;margin:10px 0;font-variant-numeric:tabular-nums}}
td,th{{padding:3px 8px;border-bottom:1px solid #f1f3f5;text-align:right;white-space:nowrap}}td:first-child,th:first-child{{text-align:left}}
.passed{{color:#2b8a3e;font-weight:600}}.failed{{color:#c92a2a;font-weight:600}}.warning{{color:#e67700}}
svg{{display:block;margin:14px 0;max-width:100%;height:auto}}.title{{font-size:13px;font-weight:600;fill:#343a40}}
.tick{{font-size:11px;fill:#495057}}.grid{{stroke:#e9ecef}}
</style></head><body><h1>vecrig load report <span class="{verdict}">{verdict}</span></h1>
<p>target {target} &middot; loadgen {version} &middot; seed {seed} &middot; loadgen CPU {cpu:.1} s</p>
<p>Latency is measured from each request's intended send time; ok/s counts successes only.</p>"#,
        target = escape(&report.target),
        version = escape(&report.loadgen_version),
        seed = report.seed,
        cpu = report.loadgen.cpu_seconds
    );
    for w in &report.warnings {
        let _ = write!(out, r#"<p class="warning">{}</p>"#, escape(w));
    }
    for s in &report.scenarios {
        scenario_section(&mut out, s);
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (x, y) pairs of the chart's first polyline.
    fn first_polyline(svg: &str) -> Vec<(f64, f64)> {
        let start = svg.find(r#"<polyline points=""#).expect("a polyline") + 18;
        let end = start + svg[start..].find('"').expect("its end");
        svg[start..end]
            .split(' ')
            .map(|pair| {
                let (x, y) = pair.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect()
    }

    /// The x-axis labels, in order.
    fn ticks(svg: &str) -> Vec<&str> {
        svg.split(r#"text-anchor="middle">"#)
            .skip(1)
            .filter_map(|rest| rest.split('<').next())
            .filter(|label| label.ends_with(" s"))
            .collect()
    }

    #[test]
    fn stats_samples_are_drawn_as_the_intervals_they_cover_not_as_lines_between_them() {
        // Three Stats samples of a 1.4 s scenario, each the peak since the one before.
        let samples = vec![(0.0, 0.0), (0.7, 1000.0), (1.4, 10.0)];
        let svg = line_chart(
            "queued",
            "requests",
            1.4,
            &[("queued", "#000", Draw::Intervals, samples)],
        );
        assert_eq!(svg.matches("<circle").count(), 3, "a dot per sample");
        let path = first_polyline(&svg);
        for pair in path.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            assert!(
                x0 == x1 || y0 == y1,
                "only steps, no slope a sample did not see: {path:?}"
            );
        }
    }

    #[test]
    fn charts_of_one_scenario_share_its_time_axis() {
        // A rate known only from 0.5 s on, beside a line over the whole 1.4 s.
        let late = line_chart(
            "shed",
            "per second",
            1.4,
            &[("shed/s", "#000", Draw::Intervals, vec![(1.0, 5.0)])],
        );
        let whole = line_chart(
            "ok",
            "per second",
            1.4,
            &[(
                "ok",
                "#000",
                Draw::Line,
                vec![(0.05, 1.0), (0.75, 2.0), (1.35, 3.0)],
            )],
        );
        assert_eq!(ticks(&late), ticks(&whole));
        assert_eq!(ticks(&whole).last(), Some(&"1.4 s"));
    }
}
