//! ANN benchmark: build time, search QPS and recall@10 of the HNSW index at several `ef`, on
//! 1 and 2 threads, against our exact scan as ground truth, on seeded clustered data.
//!
//! Run: `cargo bench -p vecrig-server --bench ann` (release). Options via environment:
//! `VECRIG_BENCH_POINTS` (default 100000), `VECRIG_BENCH_DIMS` (128), `VECRIG_BENCH_QUERIES`
//! (1000), `VECRIG_BENCH_SECONDS` per measurement (2), `VECRIG_BENCH_EXPORT=DIR` to also write
//! the data set, queries and ground truth as raw little-endian files, so another library
//! (hnswlib, via `scripts/hnswlib_bench.py`) can be measured on exactly the same data.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use vecrig::synthetic::Synthetic;
use vecrig_server::index::hnsw::{HnswParams, UsearchAnn};
use vecrig_server::index::store::{Payload, PointStore};
use vecrig_server::index::{Ann, Metric};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let points = env_or("VECRIG_BENCH_POINTS", 100_000);
    let dims = env_or("VECRIG_BENCH_DIMS", 128);
    let n_queries = env_or("VECRIG_BENCH_QUERIES", 1000);
    let seconds = env_or("VECRIG_BENCH_SECONDS", 2) as u64;
    let k = 10;
    let data = Synthetic::new(dims, Synthetic::DEFAULT_CLUSTERS, Synthetic::DEFAULT_SEED);
    println!(
        "# ann bench: {points} x {dims}-d clustered (seed {}), {n_queries} queries, k={k}, cosine",
        Synthetic::DEFAULT_SEED
    );
    println!(
        "# usearch {} (simd: {})",
        usearch::version(),
        usearch::hardware_acceleration_compiled()
    );

    let vectors: Vec<Vec<f32>> = (0..points as u64).map(|i| data.point(i).vector).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let queries: Vec<Vec<f32>> = (0..n_queries).map(|_| data.query_vector(&mut rng)).collect();

    let mut store = PointStore::new(dims, Metric::Cosine);
    for (i, v) in vectors.iter().enumerate() {
        store.upsert(i as u64, v, Payload::new());
    }
    let started = Instant::now();
    let truth: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| store.exact_search(q, k).iter().map(|n| n.id).collect())
        .collect();
    let exact_qps = n_queries as f64 / started.elapsed().as_secs_f64();
    println!("exact scan (our own), 1 thread: {exact_qps:.0} QPS");

    if let Ok(dir) = std::env::var("VECRIG_BENCH_EXPORT") {
        export(&dir, dims, &vectors, &queries, &truth);
    }

    let params = HnswParams {
        connectivity: 16,
        ef_construction: 200,
        search_threads: 2,
    };
    let ann = UsearchAnn::new(dims, Metric::Cosine, params).expect("index");
    let started = Instant::now();
    for (i, v) in vectors.iter().enumerate() {
        ann.insert(i as u64, v).expect("insert");
    }
    let build = started.elapsed();
    println!(
        "build (M=16, ef_construction=200, one writer): {:.2} s, {:.0} points/s",
        build.as_secs_f64(),
        points as f64 / build.as_secs_f64()
    );

    let ann = Arc::new(ann);
    let queries = Arc::new(queries);
    println!("| ef | recall@10 | QPS 1 thread | QPS 2 threads | vs exact (1t) |");
    println!("|---:|---:|---:|---:|---:|");
    for ef in [16, 32, 64, 128, 256] {
        let mut found = 0;
        for (q, t) in queries.iter().zip(&truth) {
            let hits = ann.search(q, k, ef).expect("search");
            found += hits.iter().filter(|h| t.contains(&h.id)).count();
        }
        let recall = found as f64 / (truth.len() * k) as f64;
        let qps1 = measure(&ann, &queries, k, ef, 1, Duration::from_secs(seconds));
        let qps2 = measure(&ann, &queries, k, ef, 2, Duration::from_secs(seconds));
        println!(
            "| {ef} | {recall:.4} | {qps1:.0} | {qps2:.0} | {:.0}x |",
            qps1 / exact_qps
        );
    }
}

/// Queries per second from `threads` threads searching for `duration`.
fn measure(
    ann: &Arc<UsearchAnn>,
    queries: &Arc<Vec<Vec<f32>>>,
    k: usize,
    ef: usize,
    threads: usize,
    duration: Duration,
) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ann, queries, done) = (Arc::clone(ann), Arc::clone(queries), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut i = t * 7919;
                while started.elapsed() < duration {
                    for _ in 0..64 {
                        let q = &queries[i % queries.len()];
                        std::hint::black_box(ann.search(q, k, ef).expect("search"));
                        i += 1;
                    }
                    done.fetch_add(64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("bench thread");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn export(dir: &str, dims: usize, vectors: &[Vec<f32>], queries: &[Vec<f32>], truth: &[Vec<u64>]) {
    std::fs::create_dir_all(dir).expect("export dir");
    let write_f32 = |name: &str, rows: &[Vec<f32>]| {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(format!("{dir}/{name}")).expect("create"),
        );
        for row in rows {
            for v in row {
                f.write_all(&v.to_le_bytes()).expect("write");
            }
        }
    };
    write_f32("base.f32", vectors);
    write_f32("queries.f32", queries);
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(format!("{dir}/truth.u64")).expect("create"));
    for row in truth {
        for id in row {
            f.write_all(&id.to_le_bytes()).expect("write");
        }
    }
    std::fs::write(format!("{dir}/dims"), dims.to_string()).expect("write");
    println!("exported data set to {dir}");
}
