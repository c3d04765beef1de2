//! How much worse a metric may get before a change counts as a regression, in the threshold
//! vocabulary with the direction a metric gets worse in: `p99+10%`, `goodput-10%`,
//! `error_rate+0.5pp`, `recall-0.01`, each for every phase or `@NAME` for one.
//!
//! Grammar: `METRIC SIGN AMOUNT[UNIT][@SCOPE]`.
//! - METRIC: a latency percentile of all requests (`p50`, `p90`, `p99`, `p99.9`, any `pN`),
//!   `goodput` (successful requests per second; `qps` is accepted), `error_rate`,
//!   `shed_rate` (RESOURCE_EXHAUSTED), `rate:CODE` (one gRPC code's share, e.g.
//!   `rate:DEADLINE_EXCEEDED`; without one of its own it takes `error_rate`'s), `recall`.
//! - SIGN: the direction the metric gets worse in, `+` for latencies and rates, `-` for
//!   goodput and recall; the other sign is refused, so a tolerance never says the opposite of
//!   what its writer meant.
//! - AMOUNT and UNIT: `%` relative to the baseline; `pp` percentage points (rates, recall);
//!   `ms`, `us`, `s` for latencies (a bare number is milliseconds); a bare number is otherwise
//!   in the metric's own unit (a fraction, requests per second).
//! - SCOPE: a phase's name, `total` for a scenario's totals, `*` (default) every phase.
//!
//! The defaults ([`DEFAULTS`]) cover every metric compared; a tolerance given for a phase
//! beats one for every phase, which beats the default.

use std::fmt;
use std::str::FromStr;

/// A metric the comparison judges.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A latency percentile of all requests, from the histogram (`99.0` for p99).
    Percentile(f64),
    /// Successful requests per second.
    Goodput,
    /// Share of requests that failed.
    ErrorRate,
    /// Share refused with RESOURCE_EXHAUSTED.
    ShedRate,
    /// Share that ended with one gRPC code.
    CodeRate(String),
    /// Recall@k of the sampled searches.
    Recall,
}

impl Metric {
    /// Whether a larger value is worse (latency, rates) rather than better (goodput, recall).
    pub fn worse_upwards(&self) -> bool {
        !matches!(self, Metric::Goodput | Metric::Recall)
    }

    /// Its name, as written in a tolerance and shown in the table.
    pub fn name(&self) -> String {
        match self {
            Metric::Percentile(p) => format!("p{p}"),
            Metric::Goodput => "goodput".into(),
            Metric::ErrorRate => "error_rate".into(),
            Metric::ShedRate => "shed_rate".into(),
            Metric::CodeRate(code) => format!("rate:{code}"),
            Metric::Recall => "recall".into(),
        }
    }

    /// The unit of its values: `ms`, `req/s`, or empty for fractions.
    pub fn unit(&self) -> &'static str {
        match self {
            Metric::Percentile(_) => "ms",
            Metric::Goodput => "req/s",
            _ => "",
        }
    }

    fn is_fraction(&self) -> bool {
        !matches!(self, Metric::Percentile(_) | Metric::Goodput)
    }
}

fn parse_metric(name: &str) -> Option<Metric> {
    Some(match name {
        "goodput" | "qps" => Metric::Goodput,
        "error_rate" => Metric::ErrorRate,
        "shed_rate" => Metric::ShedRate,
        "recall" => Metric::Recall,
        _ => {
            if let Some(code) = name.strip_prefix("rate:") {
                let code = code.to_ascii_uppercase();
                if code.is_empty() || !code.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    return None;
                }
                Metric::CodeRate(code)
            } else {
                let p: f64 = name.strip_prefix('p')?.parse().ok()?;
                if !(p > 0.0 && p < 100.0) {
                    return None;
                }
                Metric::Percentile(p)
            }
        }
    })
}

/// How far the metric may move in its bad direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// A fraction of the baseline's value (`10%` is 0.1).
    Relative(f64),
    /// In the metric's unit (ms, req/s, a fraction).
    Absolute(f64),
}

/// One tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct Tolerance {
    /// The text it was parsed from.
    pub expression: String,
    /// What it is for.
    pub metric: Metric,
    /// How much worse is allowed.
    pub amount: Amount,
    /// The phase it is for (`total` for the totals); `None` for every phase.
    pub scope: Option<String>,
}

/// A tolerance that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tolerance {expression:?}: {reason}")]
pub struct ParseError {
    /// The text.
    pub expression: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

impl Tolerance {
    /// The change allowed from `base`, a magnitude in the metric's unit.
    pub fn allowed(&self, base: f64) -> f64 {
        match self.amount {
            Amount::Relative(fraction) => base.abs() * fraction,
            Amount::Absolute(amount) => amount,
        }
    }
}

impl FromStr for Tolerance {
    type Err = ParseError;

    fn from_str(expression: &str) -> Result<Self, ParseError> {
        let err = |reason: String| ParseError {
            expression: expression.to_string(),
            reason,
        };
        let compact: String = expression.chars().filter(|c| !c.is_whitespace()).collect();
        let (body, scope) = match compact.rsplit_once('@') {
            Some((_, "")) => return Err(err("empty scope after '@'".into())),
            Some((body, "*")) => (body, None),
            Some((body, phase)) => (body, Some(phase.to_string())),
            None => (compact.as_str(), None),
        };
        // The sign after the name; `p99.9+10%` has none before it, `rate:X` has a colon.
        let at = body
            .find(['+', '-'])
            .ok_or_else(|| err("no '+' or '-' (e.g. p99+10%, recall-0.01)".into()))?;
        let (name, rest) = body.split_at(at);
        let metric = parse_metric(name).ok_or_else(|| {
            err(format!(
                "unknown metric {name:?}: expected pN (p50, p99.9), goodput, error_rate, \
                 shed_rate, rate:CODE or recall"
            ))
        })?;
        let upwards = rest.starts_with('+');
        if upwards != metric.worse_upwards() {
            let sign = if metric.worse_upwards() { '+' } else { '-' };
            return Err(err(format!(
                "{} gets worse {}: write {}{sign}AMOUNT",
                metric.name(),
                if metric.worse_upwards() {
                    "upwards"
                } else {
                    "downwards"
                },
                metric.name()
            )));
        }
        let text = &rest[1..];
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| err(format!("{number:?} is not a number")))?;
        let amount = match (unit, &metric) {
            ("%", _) => Amount::Relative(number / 100.0),
            ("pp", m) if m.is_fraction() => Amount::Absolute(number / 100.0),
            ("", _) => Amount::Absolute(number),
            ("ms", Metric::Percentile(_)) => Amount::Absolute(number),
            ("us", Metric::Percentile(_)) => Amount::Absolute(number / 1000.0),
            ("s", Metric::Percentile(_)) => Amount::Absolute(number * 1000.0),
            (unit, m) => {
                return Err(err(format!(
                    "unit {unit:?} does not fit {}: use %, {}",
                    m.name(),
                    if m.is_fraction() {
                        "pp or a fraction"
                    } else if m.unit() == "ms" {
                        "ms, us or s"
                    } else {
                        "or requests per second"
                    }
                )));
            }
        };
        Ok(Tolerance {
            expression: expression.trim().to_string(),
            metric,
            amount,
            scope,
        })
    }
}

/// The tolerances applied when none is given for a metric. Between runs of one build, the
/// farther into the tail a percentile is, the more it moves (it rests on fewer requests, and a
/// machine's hiccups land there first: `docs/benchmarks.md`, compare_false_alarms), so the
/// tail's tolerances are wider; each still catches a regression worth a look. Rates are
/// absolute (a relative change of a rate near 0 means nothing).
pub const DEFAULTS: &[&str] = &[
    "p50+10%",
    "p90+15%",
    "p99+25%",
    "p99.9+50%",
    "goodput-10%",
    "error_rate+0.5pp",
    "shed_rate+1pp",
    "recall-0.01",
];

/// The defaults, then the user's tolerances, which take precedence.
#[derive(Debug, Clone)]
pub struct Tolerances {
    defaults: Vec<Tolerance>,
    given: Vec<Tolerance>,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Tolerances {
    /// The defaults overridden by `given`.
    pub fn new(given: Vec<Tolerance>) -> Self {
        let defaults = DEFAULTS
            .iter()
            .map(|text| text.parse().expect("the default tolerances parse"))
            .collect();
        Self { defaults, given }
    }

    /// The tolerances given, without the defaults.
    pub fn given(&self) -> &[Tolerance] {
        &self.given
    }

    /// The metrics to compare: the defaults' and any other the user named, in that order.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut metrics: Vec<Metric> = Vec::new();
        for t in self.defaults.iter().chain(&self.given) {
            if !metrics.contains(&t.metric) {
                metrics.push(t.metric.clone());
            }
        }
        metrics
    }

    /// The tolerance for `metric` in the phase named `phase`: the user's for this phase, else
    /// the user's for every phase, else the default (a code's rate falls back to the error
    /// rate's). The last one given wins among equals.
    pub fn for_metric(&self, metric: &Metric, phase: &str) -> Tolerance {
        let pick = |list: &[Tolerance], metric: &Metric| {
            let matching = || list.iter().rev().filter(move |t| &t.metric == metric);
            matching()
                .find(|t| t.scope.as_deref() == Some(phase))
                .or_else(|| matching().find(|t| t.scope.is_none()))
                .cloned()
        };
        let found = pick(&self.given, metric).or_else(|| pick(&self.defaults, metric));
        match (found, metric) {
            (Some(t), _) => t,
            (None, Metric::CodeRate(_)) => {
                let mut t = self.for_metric(&Metric::ErrorRate, phase);
                t.metric = metric.clone();
                t
            }
            // Every metric compared comes from the defaults or the given list.
            (None, _) => Tolerance {
                expression: format!("{}+0%", metric.name()),
                metric: metric.clone(),
                amount: Amount::Relative(0.0),
                scope: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Tolerance {
        text.parse().expect(text)
    }

    #[test]
    fn tolerances_parse_in_the_direction_a_metric_gets_worse() {
        let t = parse("p99+10%");
        assert_eq!(t.metric, Metric::Percentile(99.0));
        assert_eq!(t.amount, Amount::Relative(0.1));
        assert_eq!(t.scope, None);
        assert!((t.allowed(20.0) - 2.0).abs() < 1e-12);
        let t = parse("p99.9 + 5ms @ search");
        assert_eq!(t.metric, Metric::Percentile(99.9));
        assert_eq!(t.amount, Amount::Absolute(5.0));
        assert_eq!(t.scope.as_deref(), Some("search"));
        assert_eq!(parse("p50+250us").amount, Amount::Absolute(0.25));
        assert_eq!(parse("p50+1s").amount, Amount::Absolute(1000.0));
        assert_eq!(parse("recall-0.01").amount, Amount::Absolute(0.01));
        assert_eq!(parse("recall-1pp").amount, Amount::Absolute(0.01));
        let t = parse("error_rate+0.5pp@*");
        assert_eq!(t.metric, Metric::ErrorRate);
        assert!(matches!(t.amount, Amount::Absolute(a) if (a - 0.005).abs() < 1e-12));
        assert_eq!(t.scope, None);
        assert_eq!(parse("qps-10%").metric, Metric::Goodput);
        assert_eq!(
            parse("rate:deadline_exceeded+1pp").metric,
            Metric::CodeRate("DEADLINE_EXCEEDED".into())
        );
        assert_eq!(parse("shed_rate+2pp@total").scope.as_deref(), Some("total"));
    }

    #[test]
    fn tolerances_that_say_the_wrong_thing_are_refused() {
        for bad in [
            "p99-10%",      // latency gets worse upwards
            "recall+0.01",  // recall gets worse downwards
            "goodput+10%",  // so does goodput
            "p99<10%",      // a threshold, not a tolerance
            "p100+10%",     // not a percentile
            "latency+10%",  // unknown metric
            "p99+10pp",     // pp is for rates
            "goodput-5ms",  // ms is for latencies
            "error_rate+x", // not a number
            "p99+10%@",     // empty scope
            "rate:+1pp",    // no code
        ] {
            assert!(bad.parse::<Tolerance>().is_err(), "{bad} parsed");
        }
        let message = "p99-10%"
            .parse::<Tolerance>()
            .expect_err("refused")
            .to_string();
        assert!(message.contains("p99+AMOUNT"), "{message}");
    }

    #[test]
    fn a_phase_tolerance_beats_an_every_phase_one_which_beats_the_default() {
        let tolerances = Tolerances::new(vec![
            parse("p99+20%"),
            parse("p99+50%@warmup"),
            parse("p95+5%"),
        ]);
        let p99 = Metric::Percentile(99.0);
        assert_eq!(
            tolerances.for_metric(&p99, "warmup").expression,
            "p99+50%@warmup"
        );
        assert_eq!(tolerances.for_metric(&p99, "steady").expression, "p99+20%");
        assert_eq!(
            tolerances
                .for_metric(&Metric::Percentile(50.0), "steady")
                .expression,
            "p50+10%"
        );
        let code = tolerances.for_metric(&Metric::CodeRate("UNAVAILABLE".into()), "steady");
        assert_eq!(code.amount, Amount::Absolute(0.005));
        assert_eq!(code.metric, Metric::CodeRate("UNAVAILABLE".into()));
        let metrics = tolerances.metrics();
        assert_eq!(metrics.len(), DEFAULTS.len() + 1, "p95 added: {metrics:?}");
        assert_eq!(metrics.last(), Some(&Metric::Percentile(95.0)));
    }
}
