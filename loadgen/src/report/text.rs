//! The report as a person reads it: one block per scenario, a table of phases, the verdict
//! of each threshold, and what the server said about itself.

use std::fmt::Write;

use vecrig::validation::report::{LatencySummary, PhaseReport, Report, ScenarioReport};

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn codes(phase: &PhaseReport) -> String {
    phase
        .codes
        .iter()
        .filter(|(code, _)| code.as_str() != "OK")
        .map(|(code, n)| format!("{code}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn row(out: &mut String, phase: &PhaseReport) {
    let l: &LatencySummary = &phase.latency;
    let _ = writeln!(
        out,
        "  {:<18} {:>6} {:>9} {:>8.2}% {:>9.1} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
        phase.name,
        phase.concurrency,
        phase.requests,
        phase.success_rate() * 100.0,
        phase.qps,
        ms(l.p50_ms),
        ms(l.p90_ms),
        ms(l.p99_ms),
        ms(l.p999_ms),
        ms(l.max_ms),
        codes(phase)
    );
}

/// One scenario's block.
pub fn render_scenario(out: &mut String, s: &ScenarioReport) {
    let verdict = if s.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(out, "\n== {} — {verdict} ==", s.name);
    let _ = writeln!(out, "  {} ({:.1} s)", s.description, s.duration_s);
    let _ = writeln!(
        out,
        "  {:<18} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  other outcomes",
        "phase", "users", "requests", "ok", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms",
    );
    for phase in &s.phases {
        row(out, phase);
    }
    if s.phases.len() > 1 {
        row(out, &s.total);
    }
    let t = &s.total;
    if t.code("RESOURCE_EXHAUSTED") > 0 {
        let _ = writeln!(
            out,
            "  shed answers: p50 {} ms, p99 {} ms; served requests: p50 {} ms, p99 {} ms",
            ms(t.shed_latency.p50_ms),
            ms(t.shed_latency.p99_ms),
            ms(t.success_latency.p50_ms),
            ms(t.success_latency.p99_ms)
        );
    }
    if t.dropped > 0 {
        let _ = writeln!(
            out,
            "  dropped: {} requests could not be sent on time (max in flight reached, or still due when the phase ended)",
            t.dropped
        );
    }
    if t.retries > 0 || t.retries_denied > 0 {
        let _ = writeln!(
            out,
            "  retries: {} sent, {} refused by the budget; first-try success {:.2}%, final {:.2}%",
            t.retries,
            t.retries_denied,
            t.first_try_success_rate() * 100.0,
            t.success_rate() * 100.0
        );
    }
    if !t.failures.is_empty() {
        // What happened, in one line: the most common texts the failures came with.
        let mut reasons: Vec<(&String, &u64)> = t.failures.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = reasons
            .iter()
            .take(3)
            .map(|(reason, n)| format!("{n}x {reason}"))
            .collect();
        let _ = writeln!(out, "  failures: {}", shown.join("; "));
    }
    for phase in &s.phases {
        if let Some(written) = phase.written {
            let _ = writeln!(
                out,
                "  {}: {written} points written (acknowledged by answers that passed)",
                phase.name
            );
        }
    }
    for phase in s.phases.iter().chain(std::iter::once(&s.total)) {
        if let Some(r) = &phase.recall
            && (phase.name != "total" || s.phases.len() > 1)
        {
            let _ = if r.queries == 0 {
                writeln!(
                    out,
                    "  recall@k {:<12} not measured: no sampled search could be checked ({} left out: sent while this run's own writes were in flight, or their exact answer failed)",
                    phase.name, r.skipped
                )
            } else {
                writeln!(
                    out,
                    "  recall@k {:<12} {:.3} mean, {:.3} worst 5% ({} sampled searches checked)",
                    phase.name,
                    r.mean(),
                    r.worst_5_percent(),
                    r.queries
                )
            };
        }
    }
    let sv = &s.server;
    if sv.samples == 0 {
        // A target without vecrig's Stats (a templated target): nothing was sampled, and
        // zeros would read as measurements.
        let _ = writeln!(
            out,
            "  server: not sampled (the target has no vecrig Stats)"
        );
    } else {
        let _ = writeln!(
            out,
            "  server: shed {}, max queued {}, max in flight {}, memory {} -> {} (max {}), points {} -> {}",
            sv.shed,
            sv.max_queued,
            sv.max_in_flight,
            mb(sv.rss_start_bytes),
            mb(sv.rss_end_bytes),
            mb(sv.rss_max_bytes),
            sv.points_start,
            sv.points_end
        );
    }
    if let Some(breadth) = sv.min_search_breadth {
        let _ = writeln!(
            out,
            "  server browned out: searches ran with as little as {:.0}% of their ef",
            breadth * 100.0
        );
    }
    let _ = writeln!(
        out,
        "  loadgen process: {:.1} CPU s ({:.2} cores), memory {}",
        s.loadgen.cpu_seconds,
        s.loadgen.cpu_cores_used,
        mb(s.loadgen.max_rss_bytes)
    );
    for t in &s.thresholds {
        let mark = if t.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(
            out,
            "  [{mark}] {:<40} {:>14} observed {}",
            t.expression,
            format!("({})", t.scope),
            t.observed_text()
        );
    }
    if let Some(fault) = &s.fault {
        out.push_str(&crate::fault::render(fault));
    }
    for w in &s.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
}

/// The whole report, as printed on stdout.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vecrig-loadgen {} against {} (seed {})",
        report.loadgen_version, report.target, report.seed
    );
    let _ = writeln!(
        out,
        "latency is measured from each request's intended send time; 'ok/s' counts successes only"
    );
    for s in &report.scenarios {
        render_scenario(&mut out, s);
    }
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let passed = report.scenarios.iter().filter(|s| s.passed).count();
    let _ = writeln!(
        out,
        "\n{}: {passed} of {} scenarios met their thresholds{}",
        if report.passed { "PASSED" } else { "FAILED" },
        report.scenarios.len(),
        if report.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    if let Some(reason) = &report.aborted {
        let _ = writeln!(out, "aborted (--abort-on-fail): {reason}");
    }
    if let Some(log) = &report.server_log {
        let _ = writeln!(out, "the spawned server's log: {log}");
    }
    out
}

/// Writes every phase's histograms as an HdrHistogram interval log: one interval per phase and
/// kind, tagged `scenario/phase/kind`, timestamps in seconds from the run's start, values in
/// microseconds (`max` column in milliseconds).
pub fn write_interval_log(report: &Report, out: &mut impl std::io::Write) -> Result<(), String> {
    use hdrhistogram::serialization::V2DeflateSerializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use std::time::{Duration, UNIX_EPOCH};

    let mut serializer = V2DeflateSerializer::new();
    let start = UNIX_EPOCH + Duration::from_millis(report.started_unix_ms);
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment(&format!(
            "vecrig-loadgen {} against {}; values in microseconds",
            report.loadgen_version, report.target
        ))
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0);
    let mut log = builder
        .begin_log_with(out, &mut serializer)
        .map_err(|e| e.to_string())?;
    let mut offset = 0.0f64;
    for scenario in &report.scenarios {
        for phase in &scenario.phases {
            let kinds = [
                ("latency", &phase.histograms.latency),
                ("success_latency", &phase.histograms.success_latency),
                ("service_time", &phase.histograms.service_time),
                ("shed_latency", &phase.histograms.shed_latency),
            ];
            for (kind, encoded) in kinds {
                let histogram = crate::measure::histogram::decode(encoded)?;
                if histogram.is_empty() {
                    continue;
                }
                // Tags may not contain spaces, commas or equals signs.
                let tag_text = format!("{}/{}/{kind}", scenario.name, phase.name)
                    .replace([' ', ',', '='], "_");
                log.write_histogram(
                    &histogram,
                    Duration::from_secs_f64(offset),
                    Duration::from_secs_f64(phase.duration_s),
                    Tag::new(&tag_text),
                )
                .map_err(|e| format!("{e:?}"))?;
            }
            offset += phase.duration_s;
        }
    }
    Ok(())
}
