//! Our own distance kernels, chosen once by CPU feature detection: for the exact scan, our
//! graph, and (in a build with the `usearch` feature) the usearch graph, through its
//! custom-metric hook ([`install`]).
//!
//! Why they exist: usearch's built-in f32 kernels (numkong) widen every product to f64 and run
//! one accumulator chain (`dot/haswell.h`, `dot/skylake.h`), so each distance waits on the FMA
//! latency at every step. Ours keep f32 and four independent 8-lane accumulators (32 values per
//! iteration), which keeps both FMA ports busy. The same kernels serve the exact scan, so the
//! two search paths agree on distances. [`dot_f16`] and [`l2_squared_f16`] take the stored side
//! at half width, widened with F16C as it is loaded: the graph walks f16 copies (see `graph`).
//!
//! Why this module holds `unsafe` (and the only place in the index that does): SIMD intrinsics
//! load through raw pointers and may only run on a CPU that has the feature, and usearch calls
//! its metric with two raw pointers to `dimensions` f32 values; the prefetch hint the graph
//! uses ([`prefetch`]) and the huge-page advice for its memory ([`advise_huge_pages`]) take raw
//! pointers too. Each `unsafe` block says why it holds. Everything outside sees safe functions:
//! [`dot`], [`l2_squared`], [`prefetch`], [`advise_huge_pages`], and `install`.
//!
//! Levels: AVX2+FMA (and F16C) when the CPU has them, else the portable code ([`dot_portable`],
//! [`l2_squared_portable`], safe Rust written so the compiler vectorises it for the baseline
//! target). AVX-512 is not used: its intrinsics and target features are stable from Rust 1.89
//! and the workspace's MSRV is 1.88; on the Zen 4 measured here, 512-bit FMAs are
//! double-pumped 256-bit ones anyway.

#![allow(unsafe_code)]

use std::sync::OnceLock;

#[cfg(feature = "usearch")]
use ::usearch::Index;
use half::f16;

#[cfg(feature = "usearch")]
use super::Metric;

/// Which kernels this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Plain Rust, vectorised by the compiler for the baseline target.
    Portable,
    /// AVX2 with fused multiply-add, four independent accumulators; F16C for half-width loads.
    Avx2Fma,
}

impl Level {
    /// A short name, for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2Fma => "avx2+fma",
        }
    }
}

/// The best level this CPU supports, detected once.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    // F16C (half-width loads for the graph's walk) came with the same CPUs as AVX2 and FMA
    // (Intel Haswell, AMD Piledriver); asking for all three keeps one level for all kernels.
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        return Level::Avx2Fma;
    }
    Level::Portable
}

/// Dot product over the shorter of the two slices, with the detected kernel.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` is `Avx2Fma` only when the CPU reports AVX2, FMA and F16C.
        Level::Avx2Fma => unsafe { x86::dot(a, b) },
        _ => dot_portable(a, b),
    }
}

/// Squared Euclidean distance over the shorter of the two slices, with the detected kernel.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` is `Avx2Fma` only when the CPU reports AVX2, FMA and F16C.
        Level::Avx2Fma => unsafe { x86::l2_squared(a, b) },
        _ => l2_squared_portable(a, b),
    }
}

/// Dot product of an f32 query with a vector stored at half width (the graph's walk, see
/// `graph`), over the shorter of the two, with the detected kernel.
#[inline]
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` is `Avx2Fma` only when the CPU reports AVX2, FMA and F16C.
        Level::Avx2Fma => unsafe { x86::dot(a, b) },
        _ => dot_f16_portable(a, b),
    }
}

/// Squared Euclidean distance from an f32 query to a vector stored at half width, as
/// [`dot_f16`].
#[inline]
pub fn l2_squared_f16(a: &[f32], b: &[f16]) -> f32 {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` is `Avx2Fma` only when the CPU reports AVX2, FMA and F16C.
        Level::Avx2Fma => unsafe { x86::l2_squared(a, b) },
        _ => l2_squared_f16_portable(a, b),
    }
}

/// Asks the CPU to start loading the cache line holding the start of `data` into its caches,
/// without waiting for it: the graph calls this for the vectors it is about to compare, so their
/// loads overlap instead of each distance stalling on its own miss. The following lines of a
/// vector are left to the hardware's stream prefetcher, which catches a sequential walk after
/// its first line (the graph asks for every line of its f16 copies, see `graph`). A no-op on
/// other architectures.
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults, whatever the address (here that of
    // a live slice, so valid anyway), and changes nothing the program can observe. SSE, which
    // provides it, is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Asks Linux to back the whole allocation of `buffer` (its capacity, touched or not) with
/// transparent huge pages (2 MiB). A graph search reads a few hundred vectors scattered over
/// the whole slab; with 4 KiB pages each one is a TLB miss and a page walk once the slab
/// outgrows the TLB's reach (a few MB: 100k x 128-d is 51 MB). Linux's usual THP setting is
/// `madvise`, so without asking there are none; with them, searches and builds are a few
/// percent faster (`docs/benchmarks.md`). Call it right after allocating, before the memory
/// is touched. Best effort: where it fails (another OS, THP
/// off) only speed changes.
pub fn advise_huge_pages<T>(buffer: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = buffer.as_ptr() as usize;
        let bytes = buffer.capacity() * std::mem::size_of::<T>();
        // madvise wants whole pages: the range is shrunk inwards to page boundaries.
        let skip = start.next_multiple_of(PAGE) - start;
        let len = bytes.saturating_sub(skip) / PAGE * PAGE;
        if len == 0 {
            return;
        }
        let addr = buffer.as_ptr().cast::<u8>().wrapping_add(skip).cast_mut();
        // SAFETY: the range lies inside `buffer`'s allocation, which we hold; MADV_HUGEPAGE
        // changes only how the kernel backs those pages, never their contents.
        let _ = unsafe { rustix::mm::madvise(addr.cast(), len, rustix::mm::Advice::LinuxHugepage) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}

/// What the kernels read the stored side of a distance as: f32 vectors, or the graph's f16
/// copies, widened to f32 value by value (see `graph`). One kernel serves both.
pub trait Stored: Copy {
    /// The value as f32.
    fn widen(self) -> f32;
}

impl Stored for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Stored for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Dot product, written with independent accumulators so the compiler vectorises it.
#[inline]
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_widened(a, b)
}

/// [`dot_f16`] in plain Rust.
#[inline]
pub fn dot_f16_portable(a: &[f32], b: &[f16]) -> f32 {
    dot_widened(a, b)
}

/// Squared Euclidean distance, written like [`dot_portable`].
#[inline]
pub fn l2_squared_portable(a: &[f32], b: &[f32]) -> f32 {
    l2_squared_widened(a, b)
}

/// [`l2_squared_f16`] in plain Rust.
#[inline]
pub fn l2_squared_f16_portable(a: &[f32], b: &[f16]) -> f32 {
    l2_squared_widened(a, b)
}

/// The portable dot product over any stored type: eight independent accumulators.
#[inline]
fn dot_widened<B: Stored>(a: &[f32], b: &[B]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].widen();
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in rest_a.iter().zip(rest_b) {
        sum += x * y.widen();
    }
    sum
}

/// The portable squared Euclidean distance over any stored type, as [`dot_widened`].
#[inline]
fn l2_squared_widened<B: Stored>(a: &[f32], b: &[B]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            let d = x[i] - y[i].widen();
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in rest_a.iter().zip(rest_b) {
        let d = x - y.widen();
        sum += d * d;
    }
    sum
}

/// The metric closure usearch stores: two pointers to `dimensions` f32 values each.
#[cfg(feature = "usearch")]
type GraphMetric = Box<dyn Fn(*const f32, *const f32) -> f32 + Send + Sync>;

/// Replaces `index`'s metric with ours for `metric` (inner product for cosine: the graph holds
/// unit vectors, see `super::usearch`). Must be called again after every `load`, which
/// restores the built-in metric named in the file's header.
#[cfg(feature = "usearch")]
pub fn install(index: &mut Index, metric: Metric) {
    let dimensions = index.dimensions();
    let is_l2 = metric == Metric::L2;
    let closure: GraphMetric = match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` is `Avx2Fma` only when the CPU reports AVX2, FMA and F16C.
        Level::Avx2Fma => unsafe { x86::graph_metric(dimensions, is_l2) },
        _ => Box::new(move |a, b| {
            // SAFETY: usearch calls the metric with two vectors of the index's scalar kind
            // (f32, set in `super::usearch`) and its `dimensions`: the stored ones and the query, which
            // it checks to be that wide before searching.
            let (a, b) = unsafe {
                (
                    std::slice::from_raw_parts(a, dimensions),
                    std::slice::from_raw_parts(b, dimensions),
                )
            };
            if is_l2 {
                l2_squared_portable(a, b)
            } else {
                1.0 - dot_portable(a, b)
            }
        }),
    };
    index.change_metric::<f32>(closure);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[cfg(feature = "usearch")]
    use super::GraphMetric;
    use super::Stored;

    /// The graph's metric, built inside an AVX2 function so that the closure inherits its
    /// target features and the kernel inlines into it (one call less per distance).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(feature = "usearch")]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn graph_metric(dimensions: usize, is_l2: bool) -> GraphMetric {
        if is_l2 {
            Box::new(move |a, b| {
                // SAFETY: as in `install`: two f32 vectors of the index's width; the closure
                // exists only once AVX2, FMA and F16C were detected.
                unsafe {
                    let (a, b) = (
                        std::slice::from_raw_parts(a, dimensions),
                        std::slice::from_raw_parts(b, dimensions),
                    );
                    l2_squared(a, b)
                }
            })
        } else {
            Box::new(move |a, b| {
                // SAFETY: as above.
                unsafe {
                    let (a, b) = (
                        std::slice::from_raw_parts(a, dimensions),
                        std::slice::from_raw_parts(b, dimensions),
                    );
                    1.0 - dot(a, b)
                }
            })
        }
    }

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// A stored type the kernels load eight at a time as eight f32 lanes.
    pub(super) trait Load8: Stored {
        /// Eight values from `p`, as f32.
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C, and `p` must point at eight readable
        /// values.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Load8 for f32 {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's (eight readable f32); the load is unaligned.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Load8 for f16 {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's; `f16` is `repr(transparent)` over `u16`, so eight of them
            // are 16 bytes, and the load is unaligned.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast::<__m128i>()) })
        }
    }

    /// Dot product over `min(a.len(), b.len())` values, the stored side `b` widened as it is
    /// loaded: four independent 8-lane accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<B: Load8>(a: &[f32], b: &[B]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads below): `i + 8 <= n` (or `i + 32 <= n`) before each, so every
        // unaligned load reads inside both slices.
        while i + 32 <= n {
            for (j, lane) in acc.iter_mut().enumerate() {
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * j)),
                        B::load8(pb.add(i + 8 * j)),
                    )
                };
                *lane = _mm256_fmadd_ps(x, y, *lane);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: see above.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), B::load8(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = a[i..n]
            .iter()
            .zip(&b[i..n])
            .map(|(x, y)| x * y.widen())
            .sum();
        horizontal_sum(sum) + tail
    }

    /// Squared Euclidean distance over `min(a.len(), b.len())` values, as [`dot`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn l2_squared<B: Load8>(a: &[f32], b: &[B]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, lane) in acc.iter_mut().enumerate() {
                // SAFETY: `i + 32 <= n`, so both loads read inside both slices.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * j)),
                        B::load8(pb.add(i + 8 * j)),
                    )
                };
                let d = _mm256_sub_ps(x, y);
                *lane = _mm256_fmadd_ps(d, d, *lane);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, so both loads read inside both slices.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), B::load8(pb.add(i))) };
            let d = _mm256_sub_ps(x, y);
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = a[i..n]
            .iter()
            .zip(&b[i..n])
            .map(|(x, y)| (x - y.widen()) * (x - y.widen()))
            .sum();
        horizontal_sum(sum) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const LENGTHS: [usize; 10] = [1, 7, 8, 15, 16, 17, 127, 128, 129, 768];

    fn random(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Within float tolerance: relative to the sum of absolute terms, which bounds the
    /// rounding difference between two summation orders.
    fn close(got: f32, want: f32, scale: f32) {
        assert!(
            (got - want).abs() <= 1e-5 * scale.max(1.0),
            "got {got}, want {want} (scale {scale})"
        );
    }

    #[test]
    fn detected_kernels_equal_the_portable_code_at_awkward_lengths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for n in LENGTHS {
            for _ in 0..20 {
                let (a, b) = (random(&mut rng, n), random(&mut rng, n));
                let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
                close(dot(&a, &b), dot_portable(&a, &b), scale);
                let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
                close(l2_squared(&a, &b), l2_squared_portable(&a, &b), scale);
            }
        }
    }

    #[test]
    fn half_width_kernels_equal_the_portable_code_and_stay_near_the_f32_distance() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        for n in LENGTHS {
            for _ in 0..20 {
                let (a, b) = (random(&mut rng, n), random(&mut rng, n));
                let half: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
                // The detected kernel and the portable one compute the same sums of the same
                // widened values.
                let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
                close(dot_f16(&a, &half), dot_f16_portable(&a, &half), scale);
                let squares: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
                close(
                    l2_squared_f16(&a, &half),
                    l2_squared_f16_portable(&a, &half),
                    squares,
                );
                // Rounding to f16 moves each value by at most 2^-11 of itself, so a distance
                // by at most about that share of the sum of its terms' sizes.
                let bound = scale * 2f32.powi(-10) + 1e-5;
                assert!((dot_f16(&a, &half) - dot(&a, &b)).abs() <= bound, "n {n}");
                let magnitude: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
                let bound = 2.0 * magnitude * 2f32.powi(-10) + 1e-5;
                let (got, want) = (l2_squared_f16(&a, &half), l2_squared(&a, &b));
                assert!((got - want).abs() <= bound, "n {n}: {got} vs {want}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_equal_the_portable_code_when_the_cpu_has_them() {
        if level() != Level::Avx2Fma {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for n in LENGTHS {
            let (a, b) = (random(&mut rng, n), random(&mut rng, n));
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            // SAFETY: the level says the CPU has AVX2, FMA and F16C.
            let got = unsafe { x86::dot(&a, &b) };
            close(got, dot_portable(&a, &b), scale);
        }
    }

    /// The metric installed into usearch computes the same through usearch's pointers.
    #[cfg(all(target_arch = "x86_64", feature = "usearch"))]
    #[test]
    fn usearch_metric_equals_the_portable_code_when_the_cpu_has_avx2() {
        if level() != Level::Avx2Fma {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for n in LENGTHS {
            let (a, b) = (random(&mut rng, n), random(&mut rng, n));
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            // SAFETY: the level says the CPU has AVX2, FMA and F16C.
            let metric = unsafe { x86::graph_metric(n, false) };
            close(
                metric(a.as_ptr(), b.as_ptr()),
                1.0 - dot_portable(&a, &b),
                scale,
            );
            // SAFETY: as above.
            let metric = unsafe { x86::graph_metric(n, true) };
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            close(
                metric(a.as_ptr(), b.as_ptr()),
                l2_squared_portable(&a, &b),
                scale,
            );
        }
    }
}
