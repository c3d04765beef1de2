//! Is a change larger than the noise? The statistics behind the comparison's verdicts, as
//! plain functions of histograms and counts.
//!
//! Two or more baselines: the runs of one build already show how far a metric wanders from
//! run to run on this machine, load and all, so that is the noise: the new value counts as
//! beyond it when it lies outside the baselines' range widened by the range's own width on
//! each side ([`outside_range`]). Widened because a handful of runs understates the spread
//! (a fourth run of the same build falls outside the range of three half the time).
//!
//! One baseline: a test of each metric on the two runs' own samples.
//! - Latency percentiles: a distribution-free 95% interval of each run's percentile from its
//!   histogram (the count of values below the quantile is binomial, so the ranks of the
//!   order statistics that bracket it are its 2.5% and 97.5% points, `n*q +- 1.96*sqrt(n*q*(1-q))`
//!   where that is close enough, summed exactly where it is skewed; open-ended where the
//!   tail is too thin to bound), and a change beyond the noise when the two intervals do
//!   not overlap (for intervals of equal width, a test at about the 0.6% level). Chosen over
//!   a two-sample Kolmogorov-Smirnov test on the buckets because the verdict is per
//!   percentile: KS judges the whole distribution, and with thousands of requests calls a
//!   shift in the median significant while saying nothing about whether a p99.9 drawn from
//!   a dozen requests moved. The interval says exactly that, and is wide where a tail is thin.
//!   Where the run's time slices show its requests were not independent (a stall piles the
//!   slow ones into a few slices), the interval is widened by [`dispersion`].
//! - Error, shed and per-code rates: a two-proportion z-test on the counts (pooled variance),
//!   two-sided, beyond the noise at p < [`ALPHA`].
//! - Goodput: successes as Poisson counts over each run's duration, a z-test on the two rates.
//! - Recall: a z-test on the two means whose variance is the larger of the binomial one over
//!   the neighbours expected and the per-query one from the recall histogram (`by_percent`):
//!   a query's k neighbours are found or missed together, so the neighbours are not k
//!   independent trials and the binomial variance alone would call noise a change.
//!
//! What one baseline cannot know is drift between runs (a busier machine, a colder cache,
//! another placement of the threads): the tests see only what moves within the two runs.
//! That is what the tolerance is for, and why a verdict needs both; on a shared machine
//! runs of both builds interleaved are the better gate (docs/compare.md).

use hdrhistogram::Histogram;
use vecrig::validation::report::RecallFigures;

/// Significance level of the tests that give a p-value.
pub const ALPHA: f64 = 0.01;

/// Confidence of each percentile's interval, and its z.
const INTERVAL: f64 = 0.95;
const INTERVAL_Z: f64 = 1.96;

/// Microseconds to milliseconds.
pub fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The value at percentile `p` (0-100) of a microsecond histogram, in ms; `None` when empty.
pub fn percentile(h: &Histogram<u64>, p: f64) -> Option<f64> {
    (!h.is_empty()).then(|| ms(h.value_at_quantile(p / 100.0)))
}

/// `erfc(x)`, with a fractional error below 1.2e-7 (Numerical Recipes' Chebyshev fit).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The two-sided p-value of a standard normal statistic.
pub fn two_sided_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2).clamp(0.0, 1.0)
}

/// p of a z-statistic `difference / sqrt(variance)`: 1 for no difference, 0 for a difference
/// without variance.
fn p_of(difference: f64, variance: f64) -> f64 {
    if difference == 0.0 {
        1.0
    } else if variance <= 0.0 {
        0.0
    } else {
        two_sided_p(difference / variance.sqrt())
    }
}

/// The 1-based ranks of the order statistics that bracket the `q` quantile of `n` values
/// with 95% confidence: `(low, high)`, `low` 0 when no rank is low enough (the interval
/// is open below), `high` `n + 1` when none is high enough (open above: a p99.9 of a few
/// hundred values may lie beyond the largest). The number of values at or below the
/// quantile is binomial `(n, q)`: exactly summed where it is skewed, by its normal
/// approximation where `n*q*(1-q) >= 25`.
pub fn rank_interval(n: u64, q: f64) -> (u64, u64) {
    let nf = n as f64;
    let variance = nf * q * (1.0 - q);
    if variance >= 25.0 {
        let sd = variance.sqrt();
        let low = (nf * q - INTERVAL_Z * sd).floor();
        let high = (nf * q + INTERVAL_Z * sd).ceil();
        return (low.max(0.0) as u64, high.min(nf + 1.0) as u64);
    }
    let tail = (1.0 - INTERVAL) / 2.0;
    // log P(B = k), from k = 0 up: P(0) = (1-q)^n, then times (n-k)/(k+1) * q/(1-q).
    let (log_q, log_not_q) = (q.ln(), (1.0 - q).ln());
    let mut log_pmf = nf * log_not_q;
    let mut cdf = 0.0;
    let mut low = 0;
    for k in 0..=n {
        cdf += log_pmf.exp();
        if cdf <= tail {
            low = k + 1;
        }
        if cdf >= 1.0 - tail {
            return (low, k + 1);
        }
        log_pmf += ((nf - k as f64) / (k as f64 + 1.0)).ln() + log_q - log_not_q;
    }
    (low, n + 1)
}

/// The fewest slices with answers from which [`dispersion`] judges; with fewer it says 1.
pub const MIN_SLICES: usize = 8;

/// How many times the variance of the count of a run's latencies above `micros` exceeds what
/// it would be if requests were independent (the binomial variance), judged from the run's
/// time slices: the batch-means estimate `m/(m-1) * sum (c_i - n_i*p)^2` over the slices'
/// counts above (`c_i` of `n_i`, `p` their pooled share), over `p*(1-p)*sum n_i`. At least
/// 1, and 1 from fewer than [`MIN_SLICES`] slices with answers or with nothing above.
///
/// Why: the requests of a run are not independent trials. A stall of the machine makes a
/// few hundred milliseconds of slow answers together, and they are exactly the ones a p99
/// rests on; a run without the stall has a p99 well below. Two runs of one build then
/// differ by far more than the binomial interval allows. Their slices show it: the count
/// above the p99 is piled into a few of them, and this factor widens the interval by its
/// square root. A change of the build moves every slice alike and leaves it near 1.
pub fn dispersion(slices: &[Histogram<u64>], micros: u64) -> f64 {
    let counts: Vec<(f64, f64)> = slices
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let n = s.len();
            (
                n as f64,
                n.saturating_sub(s.count_between(0, micros)) as f64,
            )
        })
        .collect();
    let m = counts.len();
    if m < MIN_SLICES {
        return 1.0;
    }
    let (n, above) = counts
        .iter()
        .fold((0.0, 0.0), |(n, c), (ni, ci)| (n + ni, c + ci));
    let share = above / n;
    if share <= 0.0 || share >= 1.0 {
        return 1.0;
    }
    let spread: f64 = counts
        .iter()
        .map(|(ni, ci)| (ci - ni * share).powi(2))
        .sum::<f64>()
        * m as f64
        / (m - 1) as f64;
    (spread / (share * (1.0 - share) * n)).max(1.0)
}

/// The 95% interval of the `p`th percentile (0-100) of a microsecond histogram, in ms, and
/// the [`dispersion`] its run's `slices` showed there: the values at the ranks of
/// [`rank_interval`], their distance from the percentile's rank widened by the square root
/// of the dispersion; 0 below the first and infinite above the last. Distribution-free
/// where the dispersion is 1. `None` when empty.
pub fn percentile_interval(
    h: &Histogram<u64>,
    p: f64,
    slices: &[Histogram<u64>],
) -> Option<((f64, f64), f64)> {
    let n = h.len();
    if n == 0 {
        return None;
    }
    let q = p / 100.0;
    let dispersion = dispersion(slices, h.value_at_quantile(q));
    let (mut low, mut high) = rank_interval(n, q);
    if dispersion > 1.0 {
        let (centre, widen) = (n as f64 * q, dispersion.sqrt());
        low = (centre - (centre - low as f64) * widen).floor().max(0.0) as u64;
        high = (centre + (high as f64 - centre) * widen)
            .ceil()
            .min(n as f64 + 1.0) as u64;
    }
    // The value of rank r is at quantile (r - 0.5) / n: HdrHistogram rounds the count up.
    let at = |rank: u64| ms(h.value_at_quantile((rank as f64 - 0.5) / n as f64));
    let low = if low == 0 { 0.0 } else { at(low) };
    let high = if high > n { f64::INFINITY } else { at(high) };
    Some(((low, high), dispersion))
}

/// Whether two intervals do not overlap.
pub fn disjoint(a: (f64, f64), b: (f64, f64)) -> bool {
    a.1 < b.0 || b.1 < a.0
}

/// Two-proportion z-test, two-sided: `x1` of `n1` against `x2` of `n2`; `None` without
/// requests on either side.
pub fn two_proportions(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let variance = pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64);
    Some(p_of(p2 - p1, variance))
}

/// Two Poisson rates, `c1` events in `t1` seconds against `c2` in `t2`: a z-test, two-sided;
/// `None` without a duration on either side.
pub fn poisson_rates(c1: u64, t1: f64, c2: u64, t2: f64) -> Option<f64> {
    if t1 <= 0.0 || t2 <= 0.0 {
        return None;
    }
    let variance = c1 as f64 / (t1 * t1) + c2 as f64 / (t2 * t2);
    Some(p_of(c2 as f64 / t2 - c1 as f64 / t1, variance))
}

/// Recall's mean and the variance of that mean (see the module's doc); `None` when nothing
/// was checked.
pub fn recall_estimate(r: &RecallFigures) -> Option<(f64, f64)> {
    if r.queries == 0 || r.expected == 0 {
        return None;
    }
    let mean = r.mean();
    let binomial = mean * (1.0 - mean) / r.expected as f64;
    let counted: u64 = r.by_percent.iter().sum();
    let per_query = if counted > 1 {
        let value = |p: usize| {
            if p >= 100 {
                1.0
            } else {
                (p as f64 + 0.5) / 100.0
            }
        };
        let n = counted as f64;
        let m: f64 = r
            .by_percent
            .iter()
            .enumerate()
            .map(|(p, &c)| c as f64 * value(p))
            .sum::<f64>()
            / n;
        let s2: f64 = r
            .by_percent
            .iter()
            .enumerate()
            .map(|(p, &c)| c as f64 * (value(p) - m).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        s2 / n
    } else {
        0.0
    };
    Some((mean, binomial.max(per_query)))
}

/// The two runs' recall compared: the two-sided p-value; `None` when one checked nothing.
pub fn recall_test(base: &RecallFigures, new: &RecallFigures) -> Option<f64> {
    let (m1, v1) = recall_estimate(base)?;
    let (m2, v2) = recall_estimate(new)?;
    Some(p_of(m2 - m1, v1 + v2))
}

/// Whether `new` lies outside the range of `values` widened by its width on each side, and
/// that widened range; `None` without values.
pub fn outside_range(values: &[f64], new: f64) -> Option<(bool, (f64, f64))> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    let width = max - min;
    let band = (min - width, max + width);
    Some((new < band.0 || new > band.1, band))
}

/// The histogram as a percentile spectrum for a chart: `(percentile, ms)` from the median's
/// left (percentile 0) to as far into the tail as the count resolves, evenly spaced in
/// `log10(1 / (1 - q))`.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let reach = (h.len() as f64).log10().clamp(1.0, 5.0);
    let steps = (reach * 20.0).round() as usize;
    (0..=steps)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-(i as f64) / 20.0);
            (q * 100.0, ms(h.value_at_quantile(q)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for v in values {
            h.record(v).expect("record");
        }
        h
    }

    #[test]
    fn the_normal_tail_is_right() {
        assert!((two_sided_p(1.959_964) - 0.05).abs() < 1e-6);
        assert!((two_sided_p(2.575_829) - 0.01).abs() < 1e-6);
        assert!((two_sided_p(0.0) - 1.0).abs() < 1e-6);
        assert!(two_sided_p(10.0) < 1e-20);
        assert!((two_sided_p(-1.0) - 0.317_310_5).abs() < 1e-6);
    }

    #[test]
    fn percentile_intervals_bracket_the_percentile_and_narrow_with_more_requests() {
        // 1..=1000 us: p50 is 500 us, its interval about +-31 ranks.
        let h = histogram(1..=1000);
        let ((low, high), _) = percentile_interval(&h, 50.0, &[]).expect("interval");
        assert!(
            (0.46..0.48).contains(&low) && (0.52..0.54).contains(&high),
            "{low} {high}"
        );
        // Ten times the requests: about a third as wide, relative to the value.
        let many = histogram((1..=10_000).map(|v| v / 10 + 1));
        let ((l, u), _) = percentile_interval(&many, 50.0, &[]).expect("interval");
        assert!((u - l) < (high - low) / 2.5, "{l} {u}");
        // A p99.9 of 1000 requests may lie beyond the largest: open above.
        let ((_, top), _) = percentile_interval(&h, 99.9, &[]).expect("interval");
        assert_eq!(top, f64::INFINITY);
        // Of 20 requests, so may a p90 (20 * 0.1 = 2 values above it on average).
        let ((_, top), _) = percentile_interval(&histogram(1..=20), 90.0, &[]).expect("interval");
        assert_eq!(top, f64::INFINITY);
        assert_eq!(percentile_interval(&histogram([]), 50.0, &[]), None);
    }

    #[test]
    fn exact_ranks_agree_with_the_binomial() {
        // n = 20, median: P(B <= 5) = 0.0207, P(B <= 14) = 0.9793, so ranks 6 and 15.
        assert_eq!(rank_interval(20, 0.5), (6, 15));
        // n = 20, p99.9: the largest value is below it 98% of the time.
        assert_eq!(rank_interval(20, 0.999), (20, 21));
        // The normal approximation takes over smoothly.
        let (low, high) = rank_interval(10_000, 0.5);
        assert!(
            (4900..=4903).contains(&low) && (5097..=5100).contains(&high),
            "{low} {high}"
        );
        let (low, high) = rank_interval(5000, 0.99);
        assert!(low < 4950 && high > 4950 && high <= 5000, "{low} {high}");
    }

    #[test]
    fn a_shifted_median_is_beyond_the_noise_and_resampling_is_not() {
        let base = histogram((0..2000).map(|i| 1000 + (i * 7919) % 1000));
        let same = histogram((0..2000).map(|i| 1000 + (i * 104_729) % 1000));
        let slower = histogram((0..2000).map(|i| 1300 + (i * 7919) % 1000));
        let interval = |h: &Histogram<u64>| percentile_interval(h, 50.0, &[]).expect("interval").0;
        assert!(!disjoint(interval(&base), interval(&same)));
        assert!(disjoint(interval(&base), interval(&slower)));
    }

    /// A run of 20 slices of 150 answers each, 1.0-1.1 ms, where `stalled` slices answered
    /// a third of theirs at 2-3 ms instead: the run and its slices.
    fn run_with_stalls(stalled: &[usize], seed: u64) -> (Histogram<u64>, Vec<Histogram<u64>>) {
        let mut slices = Vec::new();
        for slice in 0..20usize {
            let stall = stalled.contains(&slice);
            slices.push(histogram((0..150u64).map(|i| {
                let jitter = (i * 7919 + seed * 104_729 + slice as u64 * 31) % 100;
                if stall && i % 3 == 0 {
                    2000 + jitter * 10
                } else {
                    1000 + jitter
                }
            })));
        }
        let mut all = histogram([]);
        for s in &slices {
            all.add(s).expect("same bounds");
        }
        (all, slices)
    }

    #[test]
    fn a_stall_piled_into_few_slices_widens_the_tail_and_a_steady_run_does_not() {
        let (steady, steady_slices) = run_with_stalls(&[], 1);
        let (stalled, stalled_slices) = run_with_stalls(&[7], 2);
        // Steady: the count above its p99 is spread as independent trials would spread it.
        let ((_, _), d) = percentile_interval(&steady, 99.0, &steady_slices).expect("interval");
        assert!(d < 2.0, "{d}");
        // One stalled slice holds every answer above the p99 (50 of 3000 answers at 2-3 ms).
        let ((low, high), d) =
            percentile_interval(&stalled, 99.0, &stalled_slices).expect("interval");
        assert!(d > 10.0, "{d}");
        // The binomial interval alone calls the two runs' p99s different; the slices do not.
        let (plain, _) = percentile_interval(&stalled, 99.0, &[]).expect("interval");
        let (steady_p99, _) = percentile_interval(&steady, 99.0, &steady_slices).expect("interval");
        assert!(disjoint(plain, steady_p99), "{plain:?} {steady_p99:?}");
        assert!(
            !disjoint((low, high), steady_p99),
            "{low} {high} {steady_p99:?}"
        );
        // Too few slices to judge from: the binomial interval.
        assert_eq!(dispersion(&stalled_slices[..MIN_SLICES - 1], 1500), 1.0);
    }

    #[test]
    fn a_whole_run_slower_stays_beyond_the_noise() {
        let (base, base_slices) = run_with_stalls(&[], 1);
        // Every slice 40% slower: nothing piled up, the dispersion stays near 1.
        let slower_slices: Vec<Histogram<u64>> = base_slices
            .iter()
            .map(|s| {
                histogram(s.iter_recorded().flat_map(|v| {
                    std::iter::repeat_n(
                        v.value_iterated_to() * 14 / 10,
                        v.count_at_value() as usize,
                    )
                }))
            })
            .collect();
        let mut slower = histogram([]);
        for s in &slower_slices {
            slower.add(s).expect("same bounds");
        }
        for p in [50.0, 90.0, 99.0] {
            let (a, _) = percentile_interval(&base, p, &base_slices).expect("interval");
            let (b, d) = percentile_interval(&slower, p, &slower_slices).expect("interval");
            assert!(d < 2.0, "p{p}: {d}");
            assert!(disjoint(a, b), "p{p}: {a:?} {b:?}");
        }
    }

    #[test]
    fn proportions_and_rates_are_tested_on_their_counts() {
        // 0 of 5000 against 10 of 5000: a real change, at p ~ 0.002.
        let p = two_proportions(0, 5000, 10, 5000).expect("p");
        assert!(p < ALPHA, "{p}");
        // 5 against 7 of 5000: noise.
        assert!(two_proportions(5, 5000, 7, 5000).expect("p") > 0.1);
        assert_eq!(two_proportions(0, 100, 0, 100), Some(1.0));
        assert_eq!(two_proportions(0, 0, 0, 100), None);
        // 10,000 in 10 s against 9,900 in 10 s: within Poisson noise; 9,000 is not.
        assert!(poisson_rates(10_000, 10.0, 9_900, 10.0).expect("p") > 0.1);
        assert!(poisson_rates(10_000, 10.0, 9_000, 10.0).expect("p") < 1e-6);
        assert_eq!(poisson_rates(1, 0.0, 1, 1.0), None);
    }

    #[test]
    fn recall_variance_counts_queries_not_neighbours() {
        // 50 queries of k=10: half find all 10, half find 8. Binomially over 500 neighbours
        // the mean 0.9 is tight; over 50 queries it is looser.
        let mut r = RecallFigures::default();
        for i in 0..50 {
            r.add(if i % 2 == 0 { 10 } else { 8 }, 10);
        }
        let (mean, variance) = recall_estimate(&r).expect("estimate");
        assert!((mean - 0.9).abs() < 1e-12);
        let binomial = 0.9 * 0.1 / 500.0;
        assert!(variance > binomial, "{variance} <= {binomial}");
        let mut worse = RecallFigures::default();
        for _ in 0..50 {
            worse.add(6, 10);
        }
        assert!(recall_test(&r, &worse).expect("p") < 1e-6);
        assert!(recall_test(&r, &r).expect("p") > 0.99);
        assert_eq!(recall_test(&r, &RecallFigures::default()), None);
    }

    #[test]
    fn the_baseline_range_is_widened_by_its_width() {
        let (outside, band) = outside_range(&[10.0, 12.0], 13.5).expect("range");
        assert_eq!(band, (8.0, 14.0));
        assert!(!outside);
        assert!(outside_range(&[10.0, 12.0], 14.5).expect("range").0);
        assert!(outside_range(&[10.0, 10.0], 10.1).expect("range").0);
        assert_eq!(outside_range(&[], 1.0), None);
    }

    #[test]
    fn the_spectrum_runs_from_the_minimum_into_the_tail() {
        let h = histogram(1..=10_000);
        let points = spectrum(&h);
        assert_eq!(points.first().map(|p| p.0), Some(0.0));
        let last = points.last().expect("points");
        assert!(last.0 > 99.98 && last.0 < 100.0, "{last:?}");
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
