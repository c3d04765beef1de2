//! ANN benchmark: build time, search QPS and recall@10 of the HNSW indexes at several `ef`, on
//! 1 and 2 threads, against our exact scan as ground truth, on seeded clustered data: our own
//! graph (`index::graph`, the server's default), usearch (`--ann-engine usearch`) and hnswlib,
//! side by side on the same data, queries and ground truth, with the ratios between them at
//! the same `ef` and at equal recall (interpolated between the measured `ef`s).
//!
//! Run: `cargo bench -p vecrig-server --bench ann` (release). usearch is measured only in a
//! build with it: `cargo bench -p vecrig-server --features usearch --bench ann` (`numkong` too
//! for its built-in kernels at full speed). Options via environment:
//! `VECRIG_BENCH_POINTS` (default 100000), `VECRIG_BENCH_DIMS` (128), `VECRIG_BENCH_QUERIES`
//! (1000), `VECRIG_BENCH_SECONDS` per measurement (2). When python3 can import hnswlib and
//! numpy, the same data, queries and ground truth are handed to `hnswlib_bench.py` (M=16,
//! ef_construction=200, as ours) and the ratios are printed; `VECRIG_BENCH_HNSWLIB=0` skips
//! it. `VECRIG_BENCH_BUILTIN=0` skips re-measuring the usearch graph with usearch's built-in
//! kernels.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use vecrig::synthetic::Synthetic;
use vecrig_server::index::graph::GraphAnn;
use vecrig_server::index::store::{Payload, PointStore};
#[cfg(feature = "usearch")]
use vecrig_server::index::usearch::UsearchAnn;
use vecrig_server::index::{Ann, HnswParams, Metric};

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
    #[cfg(feature = "usearch")]
    println!(
        "# usearch {} (simd: {})",
        usearch::version(),
        usearch::hardware_acceleration_compiled()
    );
    #[cfg(not(feature = "usearch"))]
    println!("# usearch skipped: this build has no usearch (`--features usearch` to add it)");

    let vectors: Vec<Vec<f32>> = (0..points as u64).map(|i| data.point(i).vector).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let queries: Vec<Vec<f32>> = (0..n_queries)
        .map(|_| data.query_vector(&mut rng))
        .collect();

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
    println!(
        "exact scan ({} kernels): {exact_qps:.0} QPS on 1 thread",
        vecrig_server::index::kernels::level().name()
    );

    let params = HnswParams {
        connectivity: 16,
        ef_construction: 200,
        search_threads: 2,
        insert_threads: 2,
        ..HnswParams::default()
    };
    let queries = Arc::new(queries);
    let measure_all = |ann: &Arc<dyn Ann>| -> Vec<Row> {
        EFS.iter()
            .map(|&ef| {
                let recall = recall_at(ann.as_ref(), &queries, &truth, k, ef);
                let (qps1, cpu1) = measure(ann, &queries, k, ef, 1, Duration::from_secs(seconds));
                let (qps2, cpu2) = measure(ann, &queries, k, ef, 2, Duration::from_secs(seconds));
                Row {
                    ef,
                    recall,
                    qps1,
                    qps2,
                    cpu1,
                    cpu2,
                }
            })
            .collect()
    };

    #[cfg(feature = "usearch")]
    let usearch_rows = {
        let usearch = UsearchAnn::new(dims, Metric::Cosine, params).expect("index");
        let usearch_build = build(&usearch, &vectors, 1);
        println!(
            "usearch build (M=16, ef_construction=200, one writer): {:.2} s, {:.0} points/s",
            usearch_build,
            points as f64 / usearch_build
        );
        let usearch = Arc::new(usearch);
        let usearch_dyn: Arc<dyn Ann> = usearch.clone();
        let ours = measure_all(&usearch_dyn);
        println!(
            "usearch with our kernels ({}):",
            vecrig_server::index::kernels::level().name()
        );
        print_rows(&ours);
        if std::env::var("VECRIG_BENCH_BUILTIN").as_deref() != Ok("0") {
            // The same graph with usearch's own kernels: the difference is the cost per distance.
            usearch.use_builtin_metric().expect("builtin metric");
            let builtin: Vec<Row> = ours
                .iter()
                .map(|r| {
                    let d = Duration::from_secs(seconds);
                    let (qps1, cpu1) = measure(&usearch_dyn, &queries, k, r.ef, 1, d);
                    let (qps2, cpu2) = measure(&usearch_dyn, &queries, k, r.ef, 2, d);
                    Row {
                        ef: r.ef,
                        recall: r.recall,
                        qps1,
                        qps2,
                        cpu1,
                        cpu2,
                    }
                })
                .collect();
            println!("the same graph with usearch's built-in kernels (recall as above):");
            print_rows(&builtin);
            println!("| ef | QPS ratio ours/built-in 1t | 2t |");
            println!("|---:|---:|---:|");
            for (a, b) in ours.iter().zip(&builtin) {
                println!(
                    "| {} | {:.2} | {:.2} |",
                    a.ef,
                    a.qps1 / b.qps1,
                    a.qps2 / b.qps2
                );
            }
        }
        drop(usearch_dyn);
        drop(usearch);
        (ours, usearch_build)
    };

    let graph = GraphAnn::new(dims, Metric::Cosine, params).expect("graph");
    let graph_build = build(&graph, &vectors, 1);
    println!(
        "our graph build (M=16, ef_construction=200, one writer): {:.2} s, {:.0} points/s",
        graph_build,
        points as f64 / graph_build
    );
    let graph: Arc<dyn Ann> = Arc::new(graph);
    let mine = measure_all(&graph);
    println!("our graph (GraphAnn):");
    print_rows(&mine);
    drop(graph);

    // Two writers side by side (the server's indexers on this machine's two cores): build
    // time, and recall at the smallest ef, to show that the links made side by side hold.
    let two = GraphAnn::new(dims, Metric::Cosine, params).expect("graph");
    let graph_build2 = build(&two, &vectors, 2);
    let recall2 = recall_at(&two, &queries, &truth, k, EFS[0]);
    println!(
        "our graph build with 2 writers: {graph_build2:.2} s, {:.0} points/s, recall@{k} {recall2:.4} at ef {}",
        points as f64 / graph_build2,
        EFS[0]
    );
    drop(two);

    let mut engines = vec![("graph", mine, graph_build)];
    #[cfg(feature = "usearch")]
    engines.push(("usearch", usearch_rows.0, usearch_rows.1));
    if let Some(theirs) = run_hnswlib(dims, &vectors, &queries, &truth, seconds) {
        println!(
            "hnswlib build with 2 writers: {:.2} s, recall@{k} {:.4} at ef {}; ours/hnswlib build time with 2 writers: {:.2}",
            theirs.build2_s,
            theirs.build2_recall,
            EFS[0],
            graph_build2 / theirs.build2_s
        );
        println!("hnswlib, same data, same process run:");
        print_rows(&theirs.rows);
        engines.push(("hnswlib", theirs.rows, theirs.build_s));
    }
    compare(&engines);
}

/// Inserts every vector from `writers` threads, each taking every `writers`-th; seconds taken.
fn build(ann: &dyn Ann, vectors: &[Vec<f32>], writers: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for first in 0..writers {
            scope.spawn(move || {
                for i in (first..vectors.len()).step_by(writers) {
                    ann.insert(i as u64, &vectors[i]).expect("insert");
                }
            });
        }
    });
    started.elapsed().as_secs_f64()
}

/// Recall@k of `ann` at `ef` against `truth`.
fn recall_at(ann: &dyn Ann, queries: &[Vec<f32>], truth: &[Vec<u64>], k: usize, ef: usize) -> f64 {
    let mut found = 0;
    for (q, t) in queries.iter().zip(truth) {
        let hits = ann.search(q, k, ef).expect("search");
        found += hits.iter().filter(|h| t.contains(&h.id)).count();
    }
    found as f64 / (truth.len() * k) as f64
}

/// Ratios between every pair of engines: build time, QPS at the same `ef`, and QPS at equal
/// recall (interpolated between the two `ef` rows around each recall target), both wall-clock
/// and per CPU-second of the search threads (see [`Row`]).
fn compare(engines: &[(&str, Vec<Row>, f64)]) {
    println!("QPS at equal recall (wall | per CPU-second of the searching threads):");
    println!(
        "| engine | build s | @0.95 1t | 2t | @0.99 1t | 2t | cpu @0.95 1t | 2t | cpu @0.99 1t | 2t |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, rows, build_s) in engines {
        let mut line = format!("| {name} | {build_s:.2} |");
        for speed in SPEEDS {
            for target in [0.95, 0.99] {
                for threads in [1, 2] {
                    let cell = qps_at_recall(rows, target, |r| speed.1(r, threads))
                        .map_or("-".to_string(), |q| format!("{q:.0}"));
                    line.push_str(&format!(" {cell} |"));
                }
            }
        }
        println!("{line}");
    }
    for (i, (a_name, a_rows, a_build)) in engines.iter().enumerate() {
        for (b_name, b_rows, b_build) in &engines[i + 1..] {
            println!(
                "{a_name}/{b_name}: build time ratio {:.2} ({a_build:.2} s vs {b_build:.2} s)",
                a_build / b_build
            );
            println!(
                "| ef | QPS {a_name}/{b_name} 1t | 2t | per CPU-s 1t | 2t | recall {a_name} | recall {b_name} |"
            );
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for (a, b) in a_rows.iter().zip(b_rows.iter()) {
                println!(
                    "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.4} | {:.4} |",
                    a.ef,
                    a.qps1 / b.qps1,
                    a.qps2 / b.qps2,
                    a.cpu1 / b.cpu1,
                    a.cpu2 / b.cpu2,
                    a.recall,
                    b.recall
                );
            }
            for (speed_name, speed) in SPEEDS {
                for target in [0.95, 0.99] {
                    for threads in [1, 2] {
                        let at = |rows: &[Row]| qps_at_recall(rows, target, |r| speed(r, threads));
                        if let (Some(a), Some(b)) = (at(a_rows), at(b_rows)) {
                            println!(
                                "at recall {target}, {threads} thread{}, {speed_name}: {a_name} \
                                 {a:.0}, {b_name} {b:.0}, ratio {:.2}",
                                if threads == 1 { "" } else { "s" },
                                a / b
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Reads one speed of a row, for 1 or 2 threads.
type Speed = fn(&Row, usize) -> f64;

/// The two ways a row's speed is read: wall-clock QPS, and queries per CPU-second of the
/// searching threads (robust to other work on the machine taking the CPU away; a time
/// slice lost to it is not counted).
const SPEEDS: [(&str, Speed); 2] = [
    (
        "wall QPS",
        |r, threads| if threads == 1 { r.qps1 } else { r.qps2 },
    ),
    ("queries per CPU-s", |r, threads| {
        if threads == 1 { r.cpu1 } else { r.cpu2 }
    }),
];

/// QPS at exactly `target` recall: log-linear interpolation between the rows just below and
/// just above it (rows ordered by growing `ef`); `None` when no row reaches it.
fn qps_at_recall(rows: &[Row], target: f64, qps: impl Fn(&Row) -> f64) -> Option<f64> {
    let above = rows.iter().position(|r| r.recall >= target)?;
    if above == 0 {
        return Some(qps(&rows[0]));
    }
    let (lo, hi) = (&rows[above - 1], &rows[above]);
    if hi.recall <= lo.recall {
        return Some(qps(hi));
    }
    let t = (target - lo.recall) / (hi.recall - lo.recall);
    Some((qps(lo).ln() + t * (qps(hi).ln() - qps(lo).ln())).exp())
}

/// Search breadths measured, also by `hnswlib_bench.py` (keep the two lists equal).
const EFS: [usize; 9] = [16, 24, 32, 48, 64, 96, 128, 192, 256];

struct Row {
    ef: usize,
    recall: f64,
    qps1: f64,
    qps2: f64,
    /// Queries per CPU-second of the searching threads (Linux: their `schedstat` run time),
    /// on 1 and 2 threads: what the search costs, whatever else the machine runs. On an idle
    /// machine `qps1` is about `cpu1`, and `qps2` about twice `cpu2`.
    cpu1: f64,
    cpu2: f64,
}

fn print_rows(rows: &[Row]) {
    println!("| ef | recall@10 | QPS 1 thread | QPS 2 threads | per CPU-s 1t | 2t |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.4} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.ef, r.recall, r.qps1, r.qps2, r.cpu1, r.cpu2
        );
    }
}

struct Hnswlib {
    build_s: f64,
    /// The same build with two writers, and its recall at the smallest ef.
    build2_s: f64,
    build2_recall: f64,
    rows: Vec<Row>,
}

/// Runs `hnswlib_bench.py` on the same data when python3 has hnswlib; `None` (with the reason
/// printed) otherwise, or when `VECRIG_BENCH_HNSWLIB=0`.
fn run_hnswlib(
    dims: usize,
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<u64>],
    seconds: u64,
) -> Option<Hnswlib> {
    if std::env::var("VECRIG_BENCH_HNSWLIB").as_deref() == Ok("0") {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/hnswlib_bench.py");
    let probe = std::process::Command::new("python3")
        .args(["-c", "import hnswlib, numpy"])
        .output();
    if !matches!(probe, Ok(ref o) if o.status.success()) {
        println!("# hnswlib comparison skipped: `pip install hnswlib numpy` to enable it");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("vecrig-ann-bench-{}", std::process::id()));
    let dir_str = dir.to_string_lossy().to_string();
    export(&dir_str, dims, vectors, queries, truth);
    let output = std::process::Command::new("python3")
        .args([script, &dir_str, &seconds.to_string()])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!(
                "# hnswlib run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            println!("# hnswlib run failed: {e}");
            return None;
        }
    };
    let mut result = Hnswlib {
        build_s: 0.0,
        build2_s: f64::NAN,
        build2_recall: f64::NAN,
        rows: Vec::new(),
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(b) = v["build_s"].as_f64() {
            result.build_s = b;
        } else if let Some(b) = v["build2_s"].as_f64() {
            result.build2_s = b;
            result.build2_recall = v["build2_recall"].as_f64().unwrap_or(f64::NAN);
        } else {
            result.rows.push(Row {
                ef: v["ef"].as_u64().unwrap_or(0) as usize,
                recall: v["recall"].as_f64().unwrap_or(0.0),
                qps1: v["qps1"].as_f64().unwrap_or(0.0),
                qps2: v["qps2"].as_f64().unwrap_or(0.0),
                cpu1: v["cpu1"].as_f64().unwrap_or(0.0),
                cpu2: v["cpu2"].as_f64().unwrap_or(0.0),
            });
        }
    }
    Some(result)
}

/// Queries per second from `threads` threads searching for `duration`, and queries per
/// CPU-second those threads ran.
fn measure(
    ann: &Arc<dyn Ann>,
    queries: &Arc<Vec<Vec<f32>>>,
    k: usize,
    ef: usize,
    threads: usize,
    duration: Duration,
) -> (f64, f64) {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ann, queries, done) = (Arc::clone(ann), Arc::clone(queries), Arc::clone(&done));
            std::thread::spawn(move || {
                let cpu_started = thread_cpu_ns();
                let mut i = t * 7919;
                while started.elapsed() < duration {
                    for _ in 0..64 {
                        let q = &queries[i % queries.len()];
                        std::hint::black_box(ann.search(q, k, ef).expect("search"));
                        i += 1;
                    }
                    done.fetch_add(64, Ordering::Relaxed);
                }
                thread_cpu_ns().saturating_sub(cpu_started)
            })
        })
        .collect();
    let cpu_ns: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .sum();
    let done = done.load(Ordering::Relaxed) as f64;
    let per_cpu_s = if cpu_ns == 0 {
        f64::NAN
    } else {
        done / (cpu_ns as f64 / 1e9)
    };
    (done / started.elapsed().as_secs_f64(), per_cpu_s)
}

/// Nanoseconds this thread has run on a CPU (Linux's `/proc/thread-self/schedstat`, first
/// field); 0 where that is not available.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
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
}
