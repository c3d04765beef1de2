//! The comparison itself: checks that the reports can be compared, pools the baselines, and
//! judges each metric of each phase against its tolerance and the noise ([`super::noise`]).
//!
//! Baselines are pooled, never averaged: their latency histograms are added and percentiles
//! read from the sum; rates are all the baselines' counts over all their requests; goodput
//! all their successes over all their seconds; recall all their hits over all expected.

use std::collections::BTreeMap;

use vecrig::validation::report::{self, PhaseReport, Report, ScenarioReport};

use super::model::{
    Change, Comparison, Incomparable, Noise, PhaseComparison, SCHEMA, ScenarioComparison, Verdict,
};
use super::noise;
use super::pooled::Pooled;
use super::table;
use super::tolerance::{Metric, Tolerances};

/// A report and the name it was given (its path).
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    /// Its path, or any name for messages.
    pub name: &'a str,
    /// The report.
    pub report: &'a Report,
}

/// The noise judgement of one metric: by a test on the samples (what sampling alone moves),
/// and with two or more baselines by their range too (what moves between runs): beyond the
/// noise only when beyond both, since either alone is noise.
fn judge_noise(metric: &Metric, base: &Pooled, new: &Pooled, runs: &[Pooled]) -> Option<Noise> {
    let new_value = new.value(metric)?;
    let sampling = sampling_noise(metric, base, new);
    if runs.len() >= 2 {
        let values: Vec<f64> = runs.iter().filter_map(|r| r.value(metric)).collect();
        if values.len() == runs.len() {
            let (beyond, band) = noise::outside_range(&values, new_value)?;
            let range = format!(
                "{} baselines, noise band {}..{}",
                runs.len(),
                figure(band.0),
                figure(band.1)
            );
            return Some(match sampling {
                Some(sampling) => Noise {
                    method: format!("baseline range and {}", sampling.method),
                    beyond: beyond && sampling.beyond,
                    detail: format!("{range}; {}", sampling.detail),
                    p_value: sampling.p_value,
                },
                None => Noise {
                    method: "baseline range".into(),
                    beyond,
                    detail: range,
                    p_value: None,
                },
            });
        }
    }
    sampling
}

/// The test on the two runs' own samples: whether the change is more than sampling noise.
fn sampling_noise(metric: &Metric, base: &Pooled, new: &Pooled) -> Option<Noise> {
    let tested = |method: &str, p: f64| Noise {
        method: method.into(),
        beyond: p < noise::ALPHA,
        detail: format!("p={}", p_figure(p)),
        p_value: Some(p),
    };
    Some(match metric {
        Metric::Percentile(p) => {
            let (a, a_dispersion) = noise::percentile_interval(&base.latency, *p, &base.slices)?;
            let (b, b_dispersion) = noise::percentile_interval(&new.latency, *p, &new.slices)?;
            let mut detail = format!(
                "95% intervals {}..{} and {}..{} ms",
                figure(a.0),
                figure(a.1),
                figure(b.0),
                figure(b.1)
            );
            if a_dispersion > 1.0 || b_dispersion > 1.0 {
                detail += &format!(
                    " (widened: slices {}x and {}x as dispersed as independent requests)",
                    figure(a_dispersion),
                    figure(b_dispersion)
                );
            }
            Noise {
                method: "quantile intervals".into(),
                beyond: noise::disjoint(a, b),
                detail,
                p_value: None,
            }
        }
        Metric::Goodput => tested(
            "poisson rate z",
            noise::poisson_rates(
                base.successes,
                base.duration_s,
                new.successes,
                new.duration_s,
            )?,
        ),
        Metric::ErrorRate | Metric::ShedRate | Metric::CodeRate(_) => tested(
            "two-proportion z",
            noise::two_proportions(
                base.count(metric),
                base.requests,
                new.count(metric),
                new.requests,
            )?,
        ),
        Metric::Recall => tested(
            "recall z",
            noise::recall_test(base.recall.as_ref()?, new.recall.as_ref()?)?,
        ),
    })
}

fn figure(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else {
        vecrig::validation::threshold::rounded(v)
    }
}

fn p_figure(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.0e}")
    } else {
        format!("{p:.4}")
    }
}

fn judge_phase(
    name: &str,
    base: &Pooled,
    runs: &[Pooled],
    new: &Pooled,
    tolerances: &Tolerances,
) -> PhaseComparison {
    let mut metrics = tolerances.metrics();
    // Every failing code of either run, beside the error rate (RESOURCE_EXHAUSTED is the
    // shed rate's).
    for code in base.codes.keys().chain(new.codes.keys()) {
        let metric = Metric::CodeRate(code.clone());
        if code != "OK"
            && code != report::code_name(tonic::Code::ResourceExhausted)
            && !metrics.contains(&metric)
        {
            metrics.push(metric);
        }
    }
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    for metric in &metrics {
        let (Some(b), Some(n)) = (base.value(metric), new.value(metric)) else {
            if matches!(metric, Metric::Recall) && (base.recall.is_some() != new.recall.is_some()) {
                let which = if base.recall.is_some() {
                    "new run"
                } else {
                    "baseline"
                };
                notes.push(format!("recall not compared: none sampled in the {which}"));
            }
            continue;
        };
        let Some(noise) = judge_noise(metric, base, new, runs) else {
            continue;
        };
        let tolerance = tolerances.for_metric(metric, name);
        let change = n - b;
        // A hair of slack, so that a change exactly at the tolerance is within it.
        let beyond_tolerance = change.abs() > tolerance.allowed(b) * (1.0 + 1e-9) + 1e-12;
        let towards_worse = if metric.worse_upwards() {
            change > 0.0
        } else {
            change < 0.0
        };
        let verdict = match (beyond_tolerance && noise.beyond, towards_worse) {
            (false, _) => Verdict::Same,
            (true, true) => Verdict::Worse,
            (true, false) => Verdict::Better,
        };
        changes.push(Change {
            metric: metric.name(),
            unit: metric.unit().into(),
            base: b,
            new: n,
            change,
            relative: (b != 0.0).then(|| change / b),
            tolerance: tolerance.expression,
            beyond_tolerance,
            noise,
            verdict,
        });
    }
    if new.requests == 0 || base.requests == 0 {
        notes.push("no requests on one side: latency not compared".into());
    }
    PhaseComparison {
        name: name.to_string(),
        requests: (base.requests, new.requests),
        changes,
        base_latency: noise::spectrum(&base.latency),
        new_latency: noise::spectrum(&new.latency),
        notes,
    }
}

/// Parameters that may differ between runs of one scenario: the shard a report was (or how
/// many it was merged from), and free-form tags.
fn comparable_parameters(s: &ScenarioReport) -> BTreeMap<&str, &str> {
    s.parameters
        .iter()
        .filter(|(k, _)| k.as_str() != "shard" && !k.starts_with("tag."))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Checks one baseline against the new report: same schema, scenarios, phases, parameters.
fn check_comparable(base: Named<'_>, new: Named<'_>) -> Result<(), Incomparable> {
    let names = |r: &Report| {
        r.scenarios
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    if names(base.report) != names(new.report) {
        return Err(Incomparable(format!(
            "different scenarios: {} ran {:?}, {} ran {:?}",
            base.name,
            names(base.report),
            new.name,
            names(new.report)
        )));
    }
    for (b, n) in base.report.scenarios.iter().zip(&new.report.scenarios) {
        let phases =
            |s: &ScenarioReport| s.phases.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        if phases(b) != phases(n) {
            return Err(Incomparable(format!(
                "scenario {}: different phases: {} has {:?}, {} has {:?}",
                b.name,
                base.name,
                phases(b),
                new.name,
                phases(n)
            )));
        }
        let (pb, pn) = (comparable_parameters(b), comparable_parameters(n));
        if let Some(key) = pb
            .keys()
            .chain(pn.keys())
            .find(|k| pb.get(*k) != pn.get(*k))
        {
            return Err(Incomparable(format!(
                "scenario {}: different parameter {key}: {} in {}, {} in {}",
                b.name,
                pb.get(key).copied().unwrap_or("(none)"),
                base.name,
                pn.get(key).copied().unwrap_or("(none)"),
                new.name
            )));
        }
    }
    Ok(())
}

/// Compares `new` with the pooled `baselines` under `tolerances`.
pub fn compare(
    baselines: &[Named<'_>],
    new: Named<'_>,
    tolerances: &Tolerances,
) -> Result<Comparison, Incomparable> {
    compare_runs(baselines, &[new], tolerances)
}

/// Compares the pooled `news` (runs of the build under test) with the pooled `baselines`
/// under `tolerances`. Several new runs are pooled as the baselines are: one run's hiccup
/// then weighs on the tail as one run in several, which is what it is.
pub fn compare_runs(
    baselines: &[Named<'_>],
    news: &[Named<'_>],
    tolerances: &Tolerances,
) -> Result<Comparison, Incomparable> {
    if baselines.is_empty() {
        return Err(Incomparable("no baseline given".into()));
    }
    let Some(&new) = news.first() else {
        return Err(Incomparable("no new run given".into()));
    };
    for r in baselines.iter().chain(news) {
        if r.report.schema != report::SCHEMA {
            return Err(Incomparable(format!(
                "{}: schema {:?}, expected {:?}",
                r.name,
                r.report.schema,
                report::SCHEMA
            )));
        }
    }
    for other in baselines.iter().chain(&news[1..]) {
        check_comparable(*other, new)?;
    }
    let mut phase_names: Vec<&str> = vec!["total"];
    let mut scenarios = Vec::new();
    for (i, scenario) in new.report.scenarios.iter().enumerate() {
        let mut parts: Vec<(&str, usize)> = scenario
            .phases
            .iter()
            .enumerate()
            .map(|(j, p)| (p.name.as_str(), j))
            .collect();
        if scenario.phases.len() > 1 {
            parts.push(("total", usize::MAX));
        }
        let phase_of = |s: &'_ ScenarioReport, j: usize| -> PhaseReport {
            if j == usize::MAX {
                s.total.clone()
            } else {
                s.phases[j].clone()
            }
        };
        let mut phases = Vec::new();
        for (name, j) in parts {
            phase_names.push(name);
            let runs = baselines
                .iter()
                .map(|b| {
                    let s = &b.report.scenarios[i];
                    Pooled::of(b.name, &s.name, &phase_of(s, j))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut pooled = runs[0].clone();
            for run in &runs[1..] {
                pooled.add(run);
            }
            let mut new_phase = Pooled::of(new.name, &scenario.name, &phase_of(scenario, j))?;
            for other in &news[1..] {
                let s = &other.report.scenarios[i];
                new_phase.add(&Pooled::of(other.name, &s.name, &phase_of(s, j))?);
            }
            phases.push(judge_phase(name, &pooled, &runs, &new_phase, tolerances));
        }
        scenarios.push(ScenarioComparison {
            name: scenario.name.clone(),
            phases,
        });
    }
    // A tolerance for a phase no scenario has is a typo; it would otherwise pass silently.
    if let Some(t) = tolerances.given().iter().find(|t| {
        t.scope
            .as_deref()
            .is_some_and(|s| !phase_names.contains(&s))
    }) {
        return Err(Incomparable(format!(
            "tolerance {}: no phase named {:?} in the reports",
            t.expression,
            t.scope.as_deref().unwrap_or_default()
        )));
    }
    let mut regressions = Vec::new();
    let mut improvements = Vec::new();
    for s in &scenarios {
        for p in &s.phases {
            for c in &p.changes {
                let line = format!(
                    "{}/{} {} {} -> {} {} ({})",
                    s.name,
                    p.name,
                    c.metric,
                    table::value(c, c.base),
                    table::value(c, c.new),
                    table::change(c),
                    c.tolerance
                );
                match c.verdict {
                    Verdict::Worse => regressions.push(line),
                    Verdict::Better => improvements.push(line),
                    Verdict::Same => {}
                }
            }
        }
    }
    Ok(Comparison {
        schema: SCHEMA.into(),
        baselines: baselines.iter().map(|b| b.name.to_string()).collect(),
        new: news.iter().map(|n| n.name).collect::<Vec<_>>().join(" + "),
        noise_model: if baselines.len() >= 2 {
            "baseline range and statistical tests".into()
        } else {
            "statistical tests".into()
        },
        scenarios,
        regressions,
        improvements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;
    use vecrig::validation::report::ServerFigures;

    /// A one-phase report whose `requests` latencies are `micros(i)`, all OK but `errors`.
    fn report(phase: &str, requests: u64, errors: u64, micros: impl Fn(u64) -> u64) -> Report {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for i in 0..requests {
            h.record(micros(i)).expect("record");
        }
        let mut codes = BTreeMap::from([("OK".to_string(), requests - errors)]);
        if errors > 0 {
            codes.insert("UNAVAILABLE".into(), errors);
        }
        let phase = PhaseReport {
            name: phase.into(),
            duration_s: 10.0,
            requests,
            successes: requests - errors,
            qps: (requests - errors) as f64 / 10.0,
            codes,
            histograms: report::Histograms {
                latency: crate::measure::histogram::encode(&h),
                ..Default::default()
            },
            ..Default::default()
        };
        Report {
            schema: report::SCHEMA.into(),
            loadgen_version: "test".into(),
            target: "http://127.0.0.1:1".into(),
            seed: 1,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            interrupted: false,
            aborted: None,
            server_log: None,
            loadgen: Default::default(),
            scenarios: vec![ScenarioReport {
                server_metrics: Default::default(),
                name: "load".into(),
                description: String::new(),
                parameters: BTreeMap::from([("users".to_string(), "4".to_string())]),
                duration_s: 10.0,
                total: phase.clone(),
                phases: vec![phase],
                server: ServerFigures::default(),
                thresholds: Vec::new(),
                loadgen: Default::default(),
                warnings: Vec::new(),
                passed: true,
                timeline: Vec::new(),
                fine_timeline: Vec::new(),
                server_timeline: Vec::new(),
                fault: None,
            }],
            warnings: Vec::new(),
            passed: true,
        }
    }

    fn run(baselines: &[&Report], new: &Report) -> Result<Comparison, Incomparable> {
        let named: Vec<Named<'_>> = baselines
            .iter()
            .map(|report| Named {
                name: "base.json",
                report,
            })
            .collect();
        let new = Named {
            name: "new.json",
            report: new,
        };
        compare(&named, new, &Tolerances::default())
    }

    fn verdict(c: &Comparison, metric: &str) -> Verdict {
        c.scenarios[0].phases[0]
            .changes
            .iter()
            .find(|c| c.metric == metric)
            .map(|c| c.verdict)
            .unwrap_or_else(|| panic!("{metric} not compared"))
    }

    // Latencies spread evenly over [1 ms, 2 ms), in a scrambled order.
    fn spread(offset: u64) -> impl Fn(u64) -> u64 {
        move |i| offset + 1000 + (i * 7919) % 1000
    }

    #[test]
    fn a_slower_run_is_worse_beyond_tolerance_and_noise() {
        let base = report("steady", 5000, 0, spread(0));
        let same = report("steady", 5000, 0, spread(5));
        let slower = report("steady", 5000, 0, spread(600));
        let c = run(&[&base], &same).expect("comparable");
        assert!(!c.regressed(), "{:?}", c.regressions);
        let c = run(&[&base], &slower).expect("comparable");
        assert_eq!(verdict(&c, "p50"), Verdict::Worse);
        assert!(
            c.regressions
                .iter()
                .any(|r| r.starts_with("load/steady p50 "))
        );
        assert_eq!(c.noise_model, "statistical tests");
        // Back the other way: better, not a regression.
        let c = run(&[&slower], &base).expect("comparable");
        assert_eq!(verdict(&c, "p50"), Verdict::Better);
        assert!(!c.regressed());
    }

    #[test]
    fn a_change_within_tolerance_or_within_noise_is_the_same() {
        // 5% slower at the median: beyond the noise of 5000 requests, within p50+10%.
        let base = report("steady", 5000, 0, spread(0));
        let c = run(&[&base], &report("steady", 5000, 0, spread(75))).expect("comparable");
        let p50 = &c.scenarios[0].phases[0].changes[0];
        assert_eq!((p50.metric.as_str(), p50.verdict), ("p50", Verdict::Same));
        assert!(p50.noise.beyond && !p50.beyond_tolerance, "{p50:?}");
        // 30% slower, but from 20 requests each: beyond the tolerance, within the noise.
        let few = report("steady", 20, 0, spread(0));
        let c = run(
            &[&few],
            &report("steady", 20, 0, |i| 1300 + (i * 7919) % 1000),
        )
        .expect("comparable");
        let p99 = c.scenarios[0].phases[0]
            .changes
            .iter()
            .find(|c| c.metric == "p99.9")
            .expect("p99.9");
        assert_eq!(p99.verdict, Verdict::Same, "{p99:?}");
    }

    #[test]
    fn errors_beyond_tolerance_and_noise_are_a_regression_named_by_code() {
        let base = report("steady", 5000, 0, spread(0));
        let failing = report("steady", 5000, 100, spread(0));
        let c = run(&[&base], &failing).expect("comparable");
        assert_eq!(verdict(&c, "error_rate"), Verdict::Worse);
        assert_eq!(verdict(&c, "rate:UNAVAILABLE"), Verdict::Worse);
        // 3 of 5000 is within error_rate+0.5pp.
        let c = run(&[&base], &report("steady", 5000, 3, spread(0))).expect("comparable");
        assert_eq!(verdict(&c, "error_rate"), Verdict::Same);
    }

    #[test]
    fn with_several_baselines_their_spread_is_the_noise() {
        // Baselines whose medians lie 1.5 ms and 1.8 ms: a new 1.9 ms is within their
        // widened range, although 10% above the pooled median.
        let a = report("steady", 5000, 0, spread(0));
        let b = report("steady", 5000, 0, spread(300));
        let c = run(&[&a, &b], &report("steady", 5000, 0, spread(400))).expect("comparable");
        assert_eq!(c.noise_model, "baseline range and statistical tests");
        assert_eq!(verdict(&c, "p50"), Verdict::Same);
        let c = run(&[&a, &b], &report("steady", 5000, 0, spread(1500))).expect("comparable");
        assert_eq!(verdict(&c, "p50"), Verdict::Worse);
    }

    #[test]
    fn with_several_baselines_a_change_within_sampling_noise_is_the_same() {
        // Two baselines that agree exactly (a range of zero width), and a new run of as few
        // requests whose median is 13% higher: outside the range and past the tolerance,
        // but 20 requests cannot tell it from sampling noise.
        let base = report("steady", 20, 0, spread(0));
        let c = run(&[&base, &base], &report("steady", 20, 0, spread(200))).expect("comparable");
        assert_eq!(verdict(&c, "p50"), Verdict::Same);
        // The same shift over 5,000 requests is beyond both.
        let base = report("steady", 5000, 0, spread(0));
        let c = run(&[&base, &base], &report("steady", 5000, 0, spread(200))).expect("comparable");
        assert_eq!(verdict(&c, "p50"), Verdict::Worse);
    }

    #[test]
    fn incomparable_reports_say_what_differs() {
        let base = report("steady", 100, 0, spread(0));
        let other_phase = report("ramp", 100, 0, spread(0));
        let e = run(&[&base], &other_phase).expect_err("different phases");
        assert!(e.0.contains("different phases"), "{e}");
        let mut other_params = base.clone();
        other_params.scenarios[0]
            .parameters
            .insert("users".into(), "8".into());
        let e = run(&[&base], &other_params).expect_err("different parameters");
        assert!(
            e.0.contains("different parameter users: 4 in base.json, 8 in new.json"),
            "{e}"
        );
        // Tags and the shard may differ.
        let mut tagged = base.clone();
        tagged.scenarios[0]
            .parameters
            .insert("tag.build".into(), "abc".into());
        assert!(run(&[&base], &tagged).is_ok());
        let mut renamed = base.clone();
        renamed.scenarios[0].name = "suite".into();
        assert!(
            run(&[&base], &renamed)
                .expect_err("different scenarios")
                .0
                .contains("different scenarios")
        );
        let mut v2 = base.clone();
        v2.schema = "vecrig.loadgen.report/v2".into();
        assert!(
            run(&[&base], &v2)
                .expect_err("schema")
                .0
                .contains("new.json: schema")
        );
        let mut no_histograms = base.clone();
        no_histograms.scenarios[0].phases[0].histograms = Default::default();
        assert!(
            run(&[&base], &no_histograms)
                .expect_err("histograms")
                .0
                .contains("without histograms")
        );
    }
}
