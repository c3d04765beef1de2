//! Distance functions, shared by the exact scan and by tests that check the ANN index.
//!
//! They must agree with the ANN index's own metrics (usearch's `Cos`, `L2sq`, `IP`), so that
//! an exact and an approximate search for the same query report the same distances.

use super::Metric;

/// Dot product, written with independent accumulators so the compiler vectorises it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in rest_a.iter().zip(rest_b) {
        sum += x * y;
    }
    sum
}

/// Squared Euclidean distance.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in rest_a.iter().zip(rest_b) {
        let d = x - y;
        sum += d * d;
    }
    sum
}

/// Euclidean norm.
#[inline]
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Distance from a query to a stored vector, given both norms (only cosine uses them).
#[inline]
pub fn distance(
    metric: Metric,
    query: &[f32],
    query_norm: f32,
    stored: &[f32],
    stored_norm: f32,
) -> f32 {
    match metric {
        Metric::Cosine => {
            let denom = query_norm * stored_norm;
            if denom == 0.0 {
                1.0
            } else {
                1.0 - dot(query, stored) / denom
            }
        }
        Metric::L2 => l2_squared(query, stored),
        Metric::Ip => 1.0 - dot(query, stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_their_definitions() {
        let a = [1.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 3.0];
        let b = [0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 1.0, 1.0, -1.0];
        let naive_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive_dot).abs() < 1e-5);
        let naive_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((l2_squared(&a, &b) - naive_l2).abs() < 1e-5);
        let same = distance(Metric::Cosine, &a, norm(&a), &a, norm(&a));
        assert!(same.abs() < 1e-6);
        let neg: Vec<f32> = a.iter().map(|x| -x).collect();
        let opposite = distance(Metric::Cosine, &a, norm(&a), &neg, norm(&neg));
        assert!((opposite - 2.0).abs() < 1e-5);
        assert_eq!(distance(Metric::Ip, &a, 0.0, &b, 0.0), 1.0 - naive_dot);
    }
}
