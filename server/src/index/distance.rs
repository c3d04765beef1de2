//! Distance functions, shared by the exact scan and by tests that check the ANN index.
//!
//! `dot` and `l2_squared` run the kernels detected for this CPU ([`super::kernels`]); the
//! `*_portable` versions (there too) are the fallback and the reference they are tested
//! against.
//!
//! They must agree with the ANN indexes' own metrics (our graph's, and usearch's `Cos`, `L2sq`,
//! `IP`), so that an exact and an approximate search for the same query report the same
//! distances.

use super::Metric;
pub use super::kernels::{dot_portable, l2_squared_portable};

/// Dot product, with the kernel detected for this CPU.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    super::kernels::dot(a, b)
}

/// Squared Euclidean distance, with the kernel detected for this CPU.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    super::kernels::l2_squared(a, b)
}

/// Euclidean norm.
#[inline]
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// `v / |v|`, or `v` itself when it has no length (its distance to anything is then 1, as in
/// the exact scan): cosine served as `1 - a·b` of unit vectors, by either graph.
pub fn unit(v: &[f32]) -> std::borrow::Cow<'_, [f32]> {
    let norm = norm(v);
    if norm > 0.0 && (norm - 1.0).abs() > 1e-6 {
        std::borrow::Cow::Owned(v.iter().map(|x| x / norm).collect())
    } else {
        std::borrow::Cow::Borrowed(v)
    }
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
