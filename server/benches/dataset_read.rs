//! Dataset read rate beside ingest: points per second read from each dataset format
//! (`.fvecs`, `.npy`, VectorDBBench parquet, ann-benchmarks HDF5) through `vecrig::dataset`,
//! and points per second vecrig-server's storage preloads from the same file
//! (`--preload-from`: read, insert into the HNSW graph, snapshot), in one run on one machine.
//! Reading must outpace ingest by a wide margin, or the reader would be what a load test of
//! ingest measures.
//!
//! Run: `cargo bench -p vecrig-server --bench dataset_read` (release). Environment:
//! `VECRIG_BENCH_POINTS` points read (default 200000), `VECRIG_BENCH_DIMS` (128),
//! `VECRIG_BENCH_INGEST_POINTS` points preloaded (20000: the graph's insert is the slow part).
//! The parquet and HDF5 files are written by Python (numpy, pyarrow, h5py, from
//! the project's `pyenv` when it exists); without them those rows are skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vecrig::dataset::{Batch, Dataset, Sources};
use vecrig_server::engine::Shape;
use vecrig_server::index::{HnswParams, Metric};
use vecrig_server::storage::{Options, SnapshotPolicy, Storage};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_fvecs(path: &Path, values: &[f32], dims: usize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for row in values.chunks_exact(dims) {
        out.write_all(&(dims as i32).to_le_bytes())?;
        for v in row {
            out.write_all(&v.to_le_bytes())?;
        }
    }
    out.flush()
}

fn write_npy(path: &Path, values: &[f32], dims: usize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let rows = values.len() / dims;
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for v in values {
        out.write_all(&v.to_le_bytes())?;
    }
    out.flush()
}

const PYTHON_WRITER: &str = r#"
import sys, numpy as np, h5py, pyarrow as pa, pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
train = np.load(src)
emb = pa.FixedSizeListArray.from_arrays(pa.array(train.reshape(-1)), train.shape[1]).cast(pa.list_(pa.float32()))
pq.write_table(pa.table({"id": pa.array(np.arange(len(train), dtype=np.int64)), "emb": emb}), f"{out}/train.parquet")
with h5py.File(f"{out}/train.hdf5", "w") as f:
    f.attrs["distance"] = "euclidean"
    f.create_dataset("train", data=train)
"#;

/// The project's virtual environment (in `$CARGO_TARGET_DIR`, else `target/`), else python3.
fn python() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join("pyenv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Reads every point of `path`; returns the points read and the time taken.
fn read_all(path: &Path) -> Result<(u64, Duration), vecrig::dataset::Error> {
    let started = Instant::now();
    let dataset = Dataset::open(&Sources {
        dataset: Some(path.to_path_buf()),
        ..Sources::default()
    })?;
    let mut reader = dataset.read_points()?.expect("a train set");
    let mut batch = Batch::default();
    let mut points = 0;
    loop {
        reader.next_batch(1024, &mut batch)?;
        if batch.is_empty() {
            break;
        }
        points += batch.len() as u64;
    }
    Ok((points, started.elapsed()))
}

fn main() {
    let points = env_or("VECRIG_BENCH_POINTS", 200_000);
    let dims = env_or("VECRIG_BENCH_DIMS", 128);
    let ingest_points = env_or("VECRIG_BENCH_INGEST_POINTS", 20_000).min(points);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let values: Vec<f32> = (0..points * dims)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let fvecs = dir.path().join("train.fvecs");
    let npy = dir.path().join("train.npy");
    write_fvecs(&fvecs, &values, dims).expect("write fvecs");
    write_npy(&npy, &values, dims).expect("write npy");
    let mut files = vec![(".fvecs", fvecs), (".npy", npy.clone())];
    let written = std::process::Command::new(python())
        .args(["-c", PYTHON_WRITER])
        .arg(&npy)
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if written {
        files.push(("parquet", dir.path().join("train.parquet")));
        files.push(("HDF5", dir.path().join("train.hdf5")));
    } else {
        println!("(parquet and HDF5 skipped: python with numpy, pyarrow and h5py not found)");
    }
    println!("dataset read: {points} points of {dims} dimensions");
    println!("{:<10} {:>14} {:>10}", "format", "points/s", "MB/s");
    for (name, path) in &files {
        let (read, took) = read_all(path).expect("read");
        assert_eq!(read, points as u64, "{name}");
        let rate = read as f64 / took.as_secs_f64();
        println!(
            "{name:<10} {rate:>14.0} {:>10.0}",
            rate * (dims * 4) as f64 / 1e6
        );
    }

    let small = dir.path().join("ingest.npy");
    write_npy(&small, &values[..ingest_points * dims], dims).expect("write npy");
    let data = tempfile::tempdir().expect("tempdir");
    let options = Options {
        data_dir: data.path().to_path_buf(),
        shape: Shape {
            dimensions: dims,
            metric: Metric::L2,
        },
        hnsw: HnswParams::default(),
        ef_search: 64,
        preload: 0,
        preload_seed: 0,
        preload_from: Some(small),
    };
    let policy = SnapshotPolicy {
        wal_bytes: u64::MAX,
        interval: Duration::from_secs(3600),
    };
    let started = Instant::now();
    let storage = Storage::open(options, policy).expect("preload");
    let took = started.elapsed();
    storage.close().expect("close");
    println!(
        "vecrig-server --preload-from (.npy, {ingest_points} points): {:.0} points/s",
        ingest_points as f64 / took.as_secs_f64()
    );
}
