//! Pass/fail thresholds in the k6 style: `p99<50ms`, `error_rate<=0.05`, `qps>500`.
//!
//! Grammar: `METRIC OP VALUE[UNIT][@SCOPE]`.
//! - METRIC: `success_rate`, `error_rate`, `shed_rate`, `completion_rate`,
//!   `first_try_success_rate` (fractions; `5%` is accepted), `qps`, `requests`, `dropped`,
//!   latency of all requests from intended send time `p50`, `p90`, `p99`, `p99.9`, `max`,
//!   `avg`, the same for successful requests only with `ok_` in front (`ok_p99`), for
//!   service time with `service_` (`service_p99`), for shed answers with `shed_`
//!   (`shed_p99<1ms`), and `server_faults` (INTERNAL, UNKNOWN,
//!   DATA_LOSS answers), `server_shed`, `server_rss_growth` (bytes; `1GB` is accepted),
//!   `recall` (recall@k of the sampled searches, a fraction; NaN, so failing, when none
//!   were sampled).
//! - OP: `<`, `<=`, `>`, `>=`, `==`.
//! - UNIT: `us`, `ms`, `s` for latencies (in milliseconds otherwise); `B`, `KB`, `MB`, `GB`,
//!   `KiB`, `MiB`, `GiB` for bytes; `%` for fractions.
//! - SCOPE: `total` (default), `*` (every phase), or a phase's name.

use std::fmt;
use std::str::FromStr;

use super::report::{LatencySummary, PhaseReport, ScenarioReport, ThresholdResult};

/// A metric a threshold can test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// Fraction of requests that succeeded.
    SuccessRate,
    /// Fraction of requests that failed.
    ErrorRate,
    /// Fraction finally refused with RESOURCE_EXHAUSTED.
    ShedRate,
    /// Fraction answered before their deadline.
    CompletionRate,
    /// Fraction of first attempts that succeeded.
    FirstTrySuccessRate,
    /// Successful requests per second.
    Qps,
    /// Requests completed.
    Requests,
    /// Open-model arrivals dropped (not sent on time).
    Dropped,
    /// A latency statistic, in milliseconds.
    Latency(LatencyKind, Stat),
    /// INTERNAL/UNKNOWN/DATA_LOSS answers.
    ServerFaults,
    /// Requests the server reports having shed.
    ServerShed,
    /// Server resident-memory growth, bytes.
    ServerRssGrowth,
    /// Recall@k of the sampled searches.
    Recall,
}

/// Which latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    /// All requests, from intended send time.
    All,
    /// Successful requests only.
    Success,
    /// Service time of the final attempt.
    Service,
    /// Requests shed (RESOURCE_EXHAUSTED): how fast the refusal came.
    Shed,
}

/// Which statistic of a latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    /// A percentile (50, 90, 99, 99.9).
    Percentile(f64),
    /// The largest value.
    Max,
    /// The mean.
    Mean,
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
}

/// Where a threshold applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The scenario's totals.
    Total,
    /// Every phase separately.
    EachPhase,
    /// One named phase.
    Phase(String),
}

impl Scope {
    /// Whether a threshold with this scope is judged on the phase named `phase` (a threshold
    /// on the totals is judged on no single phase): the one rule the end-of-run judge and the
    /// loadgen's mid-run judges share.
    pub fn covers_phase(&self, phase: &str) -> bool {
        match self {
            Scope::Total => false,
            Scope::EachPhase => true,
            Scope::Phase(name) => name == phase,
        }
    }
}

/// A parsed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The text it was parsed from.
    pub expression: String,
    /// What is measured.
    pub metric: Metric,
    /// How it is compared.
    pub op: Op,
    /// The limit, in the metric's base unit (ms, bytes, fraction, count).
    pub value: f64,
    /// Where it applies.
    pub scope: Scope,
}

/// A threshold that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("threshold {expression:?}: {reason}")]
pub struct ParseError {
    /// The text.
    pub expression: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

fn parse_metric(name: &str) -> Option<Metric> {
    let (kind, stat_name) = if let Some(rest) = name.strip_prefix("ok_") {
        (LatencyKind::Success, rest)
    } else if let Some(rest) = name.strip_prefix("service_") {
        (LatencyKind::Service, rest)
    } else if let Some(rest) = name.strip_prefix("shed_")
        && rest != "rate"
    {
        (LatencyKind::Shed, rest)
    } else {
        (LatencyKind::All, name)
    };
    let stat = match stat_name {
        "max" => Some(Stat::Max),
        "avg" | "mean" => Some(Stat::Mean),
        p if p.starts_with('p') => p[1..]
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0 && *v <= 100.0)
            .map(Stat::Percentile),
        _ => None,
    };
    if let Some(stat) = stat {
        return Some(Metric::Latency(kind, stat));
    }
    Some(match name {
        "success_rate" => Metric::SuccessRate,
        "error_rate" => Metric::ErrorRate,
        "shed_rate" => Metric::ShedRate,
        "completion_rate" => Metric::CompletionRate,
        "first_try_success_rate" => Metric::FirstTrySuccessRate,
        "qps" => Metric::Qps,
        "requests" => Metric::Requests,
        "dropped" => Metric::Dropped,
        "server_faults" => Metric::ServerFaults,
        "server_shed" => Metric::ServerShed,
        "server_rss_growth" => Metric::ServerRssGrowth,
        "recall" => Metric::Recall,
        _ => return None,
    })
}

fn parse_value(metric: Metric, text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let scale = match (metric, unit) {
        (_, "") => 1.0,
        (Metric::Latency(..), "us") => 0.001,
        (Metric::Latency(..), "ms") => 1.0,
        (Metric::Latency(..), "s") => 1000.0,
        (Metric::ServerRssGrowth, "B") => 1.0,
        (Metric::ServerRssGrowth, "KB") => 1e3,
        (Metric::ServerRssGrowth, "MB") => 1e6,
        (Metric::ServerRssGrowth, "GB") => 1e9,
        (Metric::ServerRssGrowth, "KiB") => 1024.0,
        (Metric::ServerRssGrowth, "MiB") => 1024.0 * 1024.0,
        (Metric::ServerRssGrowth, "GiB") => 1024.0 * 1024.0 * 1024.0,
        (
            Metric::SuccessRate
            | Metric::ErrorRate
            | Metric::ShedRate
            | Metric::CompletionRate
            | Metric::FirstTrySuccessRate
            | Metric::Recall,
            "%",
        ) => 0.01,
        (_, unit) => return Err(format!("unit {unit:?} does not fit this metric")),
    };
    Ok(number * scale)
}

impl FromStr for Threshold {
    type Err = ParseError;

    fn from_str(expression: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseError {
            expression: expression.to_string(),
            reason: reason.to_string(),
        };
        let compact: String = expression.chars().filter(|c| !c.is_whitespace()).collect();
        let (body, scope) = match compact.rsplit_once('@') {
            Some((body, "total")) => (body, Scope::Total),
            Some((body, "*")) => (body, Scope::EachPhase),
            Some((_, "")) => return Err(err("empty scope after '@'")),
            Some((body, phase)) => (body, Scope::Phase(phase.to_string())),
            None => (compact.as_str(), Scope::Total),
        };
        let op_at = body
            .find(['<', '>', '='])
            .ok_or_else(|| err("no comparison (<, <=, >, >=, ==)"))?;
        let (name, rest) = body.split_at(op_at);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix("==") {
            (Op::Eq, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Gt, v)
        } else {
            return Err(err("a single '=' is not a comparison; use =="));
        };
        let metric = parse_metric(name).ok_or_else(|| err(&format!("unknown metric {name:?}")))?;
        let value = parse_value(metric, value).map_err(|reason| err(&reason))?;
        Ok(Threshold {
            expression: expression.trim().to_string(),
            metric,
            op,
            value,
            scope,
        })
    }
}

fn stat_of(summary: &LatencySummary, stat: Stat) -> f64 {
    match stat {
        Stat::Max => summary.max_ms,
        Stat::Mean => summary.mean_ms,
        Stat::Percentile(p) if p <= 50.0 => summary.p50_ms,
        Stat::Percentile(p) if p <= 90.0 => summary.p90_ms,
        Stat::Percentile(p) if p <= 99.0 => summary.p99_ms,
        Stat::Percentile(p) if p < 100.0 => summary.p999_ms,
        Stat::Percentile(_) => summary.max_ms,
    }
}

impl Metric {
    /// Whether the metric comes from the server's `Stats` rather than from the answers.
    pub fn is_server_figure(self) -> bool {
        matches!(self, Metric::ServerShed | Metric::ServerRssGrowth)
    }

    /// Whether the metric is known only once its phase has ended (recall is checked after
    /// the phase), so it cannot be judged mid-phase.
    pub fn is_known_after_phase(self) -> bool {
        matches!(self, Metric::Recall)
    }
}

impl Threshold {
    /// The metric's value in one phase (or the totals).
    pub fn observe(&self, phase: &PhaseReport) -> f64 {
        match self.metric {
            Metric::SuccessRate => phase.success_rate(),
            Metric::ErrorRate => phase.error_rate(),
            Metric::ShedRate => phase.shed_rate(),
            Metric::CompletionRate => phase.completion_rate(),
            Metric::FirstTrySuccessRate => phase.first_try_success_rate(),
            Metric::Qps => phase.qps,
            Metric::Requests => phase.requests as f64,
            Metric::Dropped => phase.dropped as f64,
            Metric::Latency(LatencyKind::All, stat) => stat_of(&phase.latency, stat),
            Metric::Latency(LatencyKind::Success, stat) => stat_of(&phase.success_latency, stat),
            Metric::Latency(LatencyKind::Service, stat) => stat_of(&phase.service_time, stat),
            Metric::Latency(LatencyKind::Shed, stat) => stat_of(&phase.shed_latency, stat),
            Metric::ServerFaults => phase.server_faults() as f64,
            Metric::ServerShed => phase.server.shed as f64,
            Metric::ServerRssGrowth => phase.server.rss_growth_bytes() as f64,
            // Nothing checked (none sampled, or all skipped for the loadgen's own writes) is
            // no evidence of recall: NaN, so the threshold fails rather than passing on 1.0.
            Metric::Recall => phase
                .recall
                .as_ref()
                .filter(|r| r.queries > 0)
                .map_or(f64::NAN, |r| r.mean()),
        }
    }

    /// Whether `observed` satisfies the threshold.
    pub fn holds(&self, observed: f64) -> bool {
        match self.op {
            Op::Lt => observed < self.value,
            Op::Le => observed <= self.value,
            Op::Gt => observed > self.value,
            Op::Ge => observed >= self.value,
            Op::Eq => (observed - self.value).abs() < f64::EPSILON,
        }
    }

    /// Evaluates the threshold on a scenario: one result per phase it applies to. A phase
    /// name that matches nothing fails, so a typo never passes silently.
    pub fn evaluate(&self, scenario: &ScenarioReport) -> Vec<ThresholdResult> {
        let result = |scope: &str, phase: &PhaseReport| {
            let observed = self.observe(phase);
            ThresholdResult {
                scope: scope.to_string(),
                expression: self.expression.clone(),
                observed,
                passed: self.holds(observed),
            }
        };
        match &self.scope {
            Scope::Total => vec![result("total", &scenario.total)],
            Scope::EachPhase => scenario
                .phases
                .iter()
                .filter(|p| self.scope.covers_phase(&p.name))
                .map(|p| result(&p.name, p))
                .collect(),
            Scope::Phase(name) => match scenario
                .phases
                .iter()
                .find(|p| self.scope.covers_phase(&p.name))
            {
                Some(p) => vec![result(name, p)],
                None => vec![ThresholdResult {
                    scope: name.clone(),
                    expression: self.expression.clone(),
                    observed: f64::NAN,
                    passed: false,
                }],
            },
        }
    }
}

/// `n` with thousands separators: `11,725`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number rounded as a person writes it: three significant digits at most below 1,000,
/// whole and grouped above.
pub fn rounded(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        format!("{sign}{}", grouped(a.round() as u64))
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        trim(format!("{v:.1}"))
    } else if a >= 0.01 {
        trim(format!("{v:.2}"))
    } else {
        format!("{v:.1e}")
    }
}

fn trim(text: String) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A metric's value with its unit, as a person writes it: `38.98 MB`, `11,725 req/s`,
/// `12.3 ms`, `0.6 s`, `0.27%`.
pub fn format_value(metric: Metric, v: f64) -> String {
    if v.is_nan() {
        return "nothing (no such phase, or nothing measured)".into();
    }
    match metric {
        Metric::Latency(..) if v >= 1000.0 => format!("{} s", rounded(v / 1000.0)),
        Metric::Latency(..) => format!("{} ms", rounded(v)),
        Metric::ServerRssGrowth => bytes(v),
        Metric::Qps => format!("{} req/s", rounded(v)),
        Metric::SuccessRate
        | Metric::ErrorRate
        | Metric::ShedRate
        | Metric::CompletionRate
        | Metric::FirstTrySuccessRate => format!("{}%", rounded(v * 100.0)),
        Metric::Recall => format!("{v:.3}"),
        Metric::Requests | Metric::Dropped | Metric::ServerFaults | Metric::ServerShed => {
            grouped(v.max(0.0).round() as u64)
        }
    }
}

/// Bytes in decimal units, two decimals: `38.98 MB`.
pub fn bytes(v: f64) -> String {
    let (value, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "GB"),
        a if a >= 1e6 => (v / 1e6, "MB"),
        a if a >= 1e3 => (v / 1e3, "KB"),
        _ => return format!("{v:.0} B"),
    };
    format!("{value:.2} {unit}")
}

impl ThresholdResult {
    /// The observed value with its unit, as a person writes it (the expression's metric).
    pub fn observed_text(&self) -> String {
        match self.expression.parse::<Threshold>() {
            Ok(threshold) => format_value(threshold.metric, self.observed),
            Err(_) => rounded(self.observed),
        }
    }
}

/// Evaluates every threshold on `scenario`, storing the results and the verdict in it.
pub fn judge(scenario: &mut ScenarioReport, thresholds: &[Threshold]) {
    scenario.thresholds = thresholds
        .iter()
        .flat_map(|t| t.evaluate(scenario))
        .collect();
    scenario.passed = scenario.thresholds.iter().all(|r| r.passed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Threshold {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn values_read_as_a_person_writes_them() {
        let observed = |expression: &str, observed: f64| {
            ThresholdResult {
                scope: "total".into(),
                expression: expression.into(),
                observed,
                passed: true,
            }
            .observed_text()
        };
        assert_eq!(observed("server_rss_growth<1GB", 38981632.0), "38.98 MB");
        assert_eq!(observed("qps>500", 11725.0937), "11,725 req/s");
        assert_eq!(observed("p99<1s", 600.0000000000001), "600 ms");
        assert_eq!(observed("p99<2s", 1234.5), "1.23 s");
        assert_eq!(observed("error_rate<1%", 0.0027), "0.27%");
        assert_eq!(observed("requests>1", 1234567.0), "1,234,567");
        assert_eq!(observed("recall>=0.95", 0.9081), "0.908");
        assert_eq!(rounded(0.6000000000000001), "0.6");
        assert_eq!(rounded(12.34), "12.3");
    }

    #[test]
    fn recall_is_a_fraction_judged_on_the_sampled_searches() {
        let recall = t("recall>=95%@*");
        assert_eq!(recall.metric, Metric::Recall);
        assert!((recall.value - 0.95).abs() < 1e-12);
        let mut phase = PhaseReport::default();
        assert!(recall.observe(&phase).is_nan(), "nothing sampled: fails");
        assert!(!recall.holds(recall.observe(&phase)));
        phase.recall = Some(super::super::report::RecallFigures {
            skipped: 12,
            ..Default::default()
        });
        assert!(
            recall.observe(&phase).is_nan(),
            "all skipped, none checked: fails"
        );
        let mut figures = super::super::report::RecallFigures::default();
        figures.add(9, 10);
        phase.recall = Some(figures);
        assert!((recall.observe(&phase) - 0.9).abs() < 1e-12);
        assert!(!recall.holds(0.9) && recall.holds(0.96));
        assert!("recall>=0.9ms".parse::<Threshold>().is_err());
    }

    #[test]
    fn parses_the_k6_style() {
        let p99 = t("p99<50ms");
        assert_eq!(
            p99.metric,
            Metric::Latency(LatencyKind::All, Stat::Percentile(99.0))
        );
        assert_eq!(
            (p99.op, p99.value, p99.scope.clone()),
            (Op::Lt, 50.0, Scope::Total)
        );
        assert_eq!(t("p99.9 < 2s").value, 2000.0);
        assert_eq!(t("p99.9<200us").value, 0.2);
        assert_eq!(t("error_rate<=5%").value, 0.05);
        assert_eq!(t("error_rate<0.01").op, Op::Lt);
        assert_eq!(t("qps>=500").op, Op::Ge);
        assert_eq!(t("server_rss_growth<1GB").value, 1e9);
        assert_eq!(t("server_faults==0").op, Op::Eq);
        assert_eq!(t("error_rate<=0.1@*").scope, Scope::EachPhase);
        assert_eq!(t("p99<1s@peak").scope, Scope::Phase("peak".into()));
        assert_eq!(
            t("ok_p90<3ms").metric,
            Metric::Latency(LatencyKind::Success, Stat::Percentile(90.0))
        );
        assert_eq!(
            t("shed_p99<1ms").metric,
            Metric::Latency(LatencyKind::Shed, Stat::Percentile(99.0))
        );
        assert_eq!(t("shed_rate<0.2").metric, Metric::ShedRate);
        assert_eq!(
            t("service_max<3ms").metric,
            Metric::Latency(LatencyKind::Service, Stat::Max)
        );
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for bad in [
            "p99",
            "p99=5ms",
            "latency<5ms",
            "p99<fast",
            "qps>5ms",
            "error_rate<1GB",
            "p0<1ms",
            "p99<1ms@",
        ] {
            let e = bad.parse::<Threshold>().expect_err(bad);
            assert!(!e.reason.is_empty());
            assert!(e.to_string().contains(bad));
        }
    }

    #[test]
    fn evaluates_on_phases() {
        let mut phase = PhaseReport {
            name: "peak".into(),
            requests: 100,
            successes: 95,
            qps: 600.0,
            ..Default::default()
        };
        phase.codes.insert("OK".into(), 95);
        phase.codes.insert("RESOURCE_EXHAUSTED".into(), 5);
        phase.latency.p99_ms = 40.0;
        let mut scenario = ScenarioReport {
            server_metrics: Default::default(),
            name: "s".into(),
            description: String::new(),
            parameters: Default::default(),
            duration_s: 1.0,
            phases: vec![phase.clone()],
            total: phase,
            server: Default::default(),
            thresholds: vec![],
            loadgen: Default::default(),
            warnings: vec![],
            passed: false,
            timeline: vec![],
            fine_timeline: vec![],
            server_timeline: vec![],
            fault: None,
        };
        judge(
            &mut scenario,
            &[
                t("success_rate>=0.95"),
                t("shed_rate<10%"),
                t("p99<50ms@*"),
                t("qps>500"),
            ],
        );
        assert!(scenario.passed, "{:?}", scenario.thresholds);
        assert_eq!(scenario.thresholds.len(), 4);
        judge(
            &mut scenario,
            &[t("p99<30ms"), t("error_rate<1%@nosuchphase")],
        );
        assert!(!scenario.passed);
        assert!(scenario.thresholds.iter().all(|r| !r.passed));
    }
}
