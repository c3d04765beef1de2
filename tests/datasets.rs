//! Datasets from files: the rig reads the very vectors and neighbours that numpy, h5py and
//! pyarrow wrote, in every format; a bad file fails with one line naming it; a server
//! preloaded from a file (`--preload-from`) and searched with the file's queries is judged
//! against the file's neighbours as against its own exact answer, and neighbours half of
//! which are wrong halve the recall; a scenario file's `[dataset]` is ingested through the
//! templates and judged by its neighbours.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use vecrig::dataset::{Dataset, Metric, Sources};
use vecrig::validation::report::{RecallFigures, Report};
use vecrig_loadgen::plan::dataset::{Order, Spec};
use vecrig_loadgen::plan::scenario::Stage;
use vecrig_loadgen::plan::suite::{Load, LoadModel, Profile};
use vecrig_loadgen::plan::workload::WorkloadKind;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::target::LocalServer;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

use crate::common::{python, python_or_skip};

const POINTS: usize = 300;
const QUERIES: usize = 20;
const DIMENSIONS: usize = 8;
const K: usize = 10;

/// Writes the same small dataset in every format, and raw little-endian copies to check against.
const WRITE: &str = r#"
import os, sys, numpy as np, h5py, pyarrow as pa, pyarrow.parquet as pq
out, n, q, d, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(7)
train = rng.standard_normal((n, d)).astype(np.float32)
test = rng.standard_normal((q, d)).astype(np.float32)
dist = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)
neighbors = np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int32)
train.tofile(f"{out}/train.raw"); test.tofile(f"{out}/test.raw"); neighbors.tofile(f"{out}/neighbors.raw")
def vecs(path, a, dtype):
    rows = a.shape[0]
    body = np.empty((rows, 1 + a.shape[1]), dtype=np.int32 if dtype != np.uint8 else np.int32)
    with open(path, "wb") as f:
        for row in a:
            f.write(np.int32(a.shape[1]).tobytes()); f.write(row.astype(dtype).tobytes())
vecs(f"{out}/train.fvecs", train, np.float32)
vecs(f"{out}/test.fvecs", test, np.float32)
vecs(f"{out}/neighbors.ivecs", neighbors, np.int32)
bytes_train = (np.abs(train) * 40).clip(0, 255).astype(np.uint8)
bytes_train.tofile(f"{out}/train_u8.raw"); vecs(f"{out}/train.bvecs", bytes_train, np.uint8)
np.save(f"{out}/train.npy", train); np.save(f"{out}/test.npy", test); np.save(f"{out}/neighbors.npy", neighbors)
os.makedirs(f"{out}/vdb", exist_ok=True)
emb = lambda a: pa.array([list(map(float, r)) for r in a], type=pa.list_(pa.float32()))
pq.write_table(pa.table({"id": pa.array(range(n), pa.int64()), "emb": emb(train)}), f"{out}/vdb/train.parquet", row_group_size=64)
pq.write_table(pa.table({"id": pa.array(range(q), pa.int64()), "emb": emb(test)}), f"{out}/vdb/test.parquet")
pq.write_table(pa.table({"id": pa.array(range(q), pa.int64()),
    "neighbors_id": pa.array([list(map(int, r)) for r in neighbors], type=pa.list_(pa.int64()))}), f"{out}/vdb/neighbors.parquet")
texts = [f"query {i} about item {i * 7}" for i in range(q)]
open(f"{out}/texts.txt", "w").write("\n".join(texts) + "\n")
pq.write_table(pa.table({"id": pa.array(range(q), pa.int64()), "query": pa.array(texts)}), f"{out}/texts.parquet")
far = np.argsort(-dist, axis=1, kind="stable")[:, : k - k // 2].astype(np.int32)
np.save(f"{out}/neighbors_half_wrong.npy", np.concatenate([neighbors[:, : k // 2], far], axis=1))
with h5py.File(f"{out}/ann.hdf5", "w") as f:
    f.attrs["distance"] = "euclidean"
    f.create_dataset("train", data=train); f.create_dataset("test", data=test)
    f.create_dataset("neighbors", data=neighbors)
    f.create_dataset("distances", data=np.sqrt(np.take_along_axis(dist, neighbors, 1)).astype(np.float32))
"#;

/// The small dataset in every format, in a temporary directory, or `None` (skipped) without
/// numpy, h5py and pyarrow.
fn written(test: &str) -> Option<tempfile::TempDir> {
    if !python_or_skip(
        test,
        "numpy, h5py, pyarrow",
        "numpy, h5py or pyarrow missing",
    ) {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(python())
        .args(["-c", WRITE])
        .arg(dir.path())
        .args([POINTS, QUERIES, DIMENSIONS, K].map(|v| v.to_string()))
        .status()
        .expect("python");
    assert!(status.success(), "the dataset writer failed");
    Some(dir)
}

fn raw_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("raw file")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn raw_i64(path: &Path) -> Vec<i64> {
    std::fs::read(path)
        .expect("raw file")
        .chunks_exact(4)
        .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

/// Every train point of `dataset`, in order, through batches of an odd size.
fn all_points(dataset: &Dataset) -> (Vec<u64>, Vec<f32>) {
    let mut reader = dataset.read_points().expect("reader").expect("train set");
    let (mut ids, mut vectors) = (Vec::new(), Vec::new());
    let mut batch = vecrig::dataset::Batch::default();
    loop {
        reader.next_batch(37, &mut batch).expect("batch");
        if batch.is_empty() {
            break;
        }
        ids.extend_from_slice(&batch.ids);
        vectors.extend_from_slice(&batch.vectors);
    }
    (ids, vectors)
}

fn sources(dir: &Path, dataset: &str, queries: Option<&str>, neighbors: Option<&str>) -> Sources {
    Sources {
        dataset: Some(dir.join(dataset)),
        queries: queries.map(|q| dir.join(q)),
        neighbors: neighbors.map(|n| dir.join(n)),
    }
}

#[test]
fn every_format_reads_the_vectors_and_neighbours_the_python_writers_wrote() {
    let Some(dir) = written("every_format_reads_the_vectors_and_neighbours") else {
        return;
    };
    let dir = dir.path();
    let train = raw_f32(&dir.join("train.raw"));
    let test = raw_f32(&dir.join("test.raw"));
    let neighbors = raw_i64(&dir.join("neighbors.raw"));
    let cases = [
        sources(
            dir,
            "train.fvecs",
            Some("test.fvecs"),
            Some("neighbors.ivecs"),
        ),
        sources(dir, "train.npy", Some("test.npy"), Some("neighbors.npy")),
        sources(dir, "vdb", None, None),
        sources(
            dir,
            "vdb/train.parquet",
            Some("vdb/test.parquet"),
            Some("vdb/neighbors.parquet"),
        ),
        sources(dir, "ann.hdf5", None, None),
        // Parts from different formats mix.
        sources(dir, "ann.hdf5", Some("test.npy"), Some("neighbors.ivecs")),
    ];
    for case in &cases {
        let what = format!("{:?}", case.dataset.as_deref().map(Path::display));
        let dataset = Dataset::open(case).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(dataset.points(), POINTS as u64, "{what}");
        assert_eq!(dataset.dimensions(), DIMENSIONS, "{what}");
        let (ids, vectors) = all_points(&dataset);
        assert_eq!(ids, (0..POINTS as u64).collect::<Vec<_>>(), "{what}");
        assert_eq!(vectors, train, "{what}: train vectors");
        let queries = dataset.queries.as_ref().expect("queries");
        assert_eq!(queries.values, test, "{what}: queries");
        let truth = dataset.neighbors.as_ref().expect("neighbours");
        assert_eq!(truth.values, neighbors, "{what}: neighbours");
        assert_eq!(
            dataset.neighbors_of(3, 4),
            Some(&neighbors[3 * K..3 * K + 4])
        );
    }
    let hdf5 = Dataset::open(&sources(dir, "ann.hdf5", None, None)).expect("hdf5");
    assert_eq!(hdf5.metric, Some(Metric::L2), "the distance attribute");
    let bytes = Dataset::open(&sources(dir, "train.bvecs", None, None)).expect("bvecs");
    let expected: Vec<f32> = std::fs::read(dir.join("train_u8.raw"))
        .expect("raw")
        .into_iter()
        .map(f32::from)
        .collect();
    assert_eq!(all_points(&bytes).1, expected, "bvecs");
    let lines = vecrig::dataset::texts::read(&dir.join("texts.txt")).expect("texts");
    assert_eq!(lines.len(), QUERIES);
    assert_eq!(lines[3], "query 3 about item 21");
    let column = vecrig::dataset::texts::read(&dir.join("texts.parquet")).expect("texts");
    assert_eq!(column, lines, "a parquet column reads as the lines");
}

/// The error `sources` give: one line, naming `file`, saying `what`.
fn assert_fails(sources: &Sources, file: &Path, what: &str) {
    let error = Dataset::open(sources)
        .err()
        .unwrap_or_else(|| panic!("{} was accepted", file.display()))
        .to_string();
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(
        error.contains(&file.display().to_string()),
        "names the file: {error}"
    );
    assert!(error.contains(what), "says '{what}': {error}");
}

fn truncated(from: &Path, to: PathBuf, cut: u64) -> PathBuf {
    let bytes = std::fs::read(from).expect("read");
    std::fs::write(&to, &bytes[..bytes.len() - cut as usize]).expect("write");
    to
}

#[test]
fn each_bad_input_fails_before_any_load_with_one_line_naming_the_file() {
    let Some(dir) = written("each_bad_input_fails_before_any_load") else {
        return;
    };
    let dir = dir.path();
    let missing = dir.join("absent.fvecs");
    assert_fails(
        &sources(dir, "absent.fvecs", None, None),
        &missing,
        "No such file",
    );

    let cut = truncated(&dir.join("train.fvecs"), dir.join("cut.fvecs"), 6);
    assert_fails(&sources(dir, "cut.fvecs", None, None), &cut, "truncated");
    let cut = truncated(&dir.join("train.npy"), dir.join("cut.npy"), 6);
    assert_fails(&sources(dir, "cut.npy", None, None), &cut, "truncated");
    let cut = truncated(&dir.join("ann.hdf5"), dir.join("cut.hdf5"), 4000);
    assert_fails(&sources(dir, "cut.hdf5", None, None), &cut, "");

    let garbage = dir.join("garbage.hdf5");
    std::fs::write(&garbage, vec![0x5a; 4096]).expect("write");
    assert_fails(
        &sources(dir, "garbage.hdf5", None, None),
        &garbage,
        "corrupt",
    );
    let garbage = dir.join("garbage.parquet");
    std::fs::write(&garbage, vec![0x5a; 4096]).expect("write");
    assert_fails(
        &sources(dir, "garbage.parquet", None, None),
        &garbage,
        "corrupt",
    );
    let garbage = dir.join("garbage.npy");
    std::fs::write(&garbage, vec![0x5a; 4096]).expect("write");
    assert_fails(
        &sources(dir, "garbage.npy", None, None),
        &garbage,
        "corrupt",
    );

    // Neighbours that name a point past the train set: the train set is cut to its first 100
    // rows, while the neighbours were computed over all of them.
    let short = dir.join("short.fvecs");
    let row = 4 + 4 * DIMENSIONS;
    let bytes = std::fs::read(dir.join("train.fvecs")).expect("read");
    std::fs::write(&short, &bytes[..100 * row]).expect("write");
    let neighbors = dir.join("neighbors.ivecs");
    assert_fails(
        &sources(
            dir,
            "short.fvecs",
            Some("test.fvecs"),
            Some("neighbors.ivecs"),
        ),
        &neighbors,
        "past the train set (100 points)",
    );

    // Queries of another width than the points.
    let wide = dir.join("wide.fvecs");
    let mut bytes = Vec::new();
    for _ in 0..3 {
        bytes.extend_from_slice(&(DIMENSIONS as i32 + 1).to_le_bytes());
        bytes.extend(std::iter::repeat_n(0u8, 4 * (DIMENSIONS + 1)));
    }
    std::fs::write(&wide, bytes).expect("write");
    assert_fails(
        &sources(dir, "train.fvecs", Some("wide.fvecs"), None),
        &wide,
        "9 dimensions, 8 expected",
    );

    // And against the target: a dataset of 8 dimensions for a target of 16.
    let good = sources(dir, "train.npy", None, None);
    let dataset = Dataset::open(&good).expect("open");
    let error = dataset
        .check_dimensions(&good, 16)
        .expect_err("16 != 8")
        .to_string();
    assert!(
        error.contains("train.npy") && error.contains("8 dimensions, 16 expected"),
        "{error}"
    );
}

/// A server of the dataset's width and metric, `extra` flags added.
async fn server(data: &Path, extra: &[&str]) -> LocalServer {
    let mut flags: Vec<String> = ["--dimensions", "8", "--metric", "l2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(extra.iter().map(|s| s.to_string()));
    LocalServer::spawn(
        &crate::common::process::server_binary(),
        0,
        Some(data),
        None,
        &flags,
    )
    .await
    .expect("vecrig-server starts")
}

/// A light closed load of vector searches, every one sampled for recall.
async fn searches(target: &str, dataset: Spec) -> RecallFigures {
    let mut options = RunOptions::new(target);
    options.recall_sample = 1.0;
    let mut plan = Plan::new(vec![ScenarioSpec::Load(Load {
        model: LoadModel::Closed,
        start: 2.0,
        stages: vec![Stage {
            duration: Duration::from_millis(800),
            target: 2.0,
        }],
        max_in_flight: 10,
        think: Duration::from_millis(2),
    })]);
    plan.workload = Some(WorkloadKind::Vector);
    plan.dataset = Some(dataset);
    let report = vecrig_loadgen::run(&options, &plan, &Stop::default())
        .await
        .expect("pre-flight");
    recall_of(&report)
}

fn recall_of(report: &Report) -> RecallFigures {
    let recall = report.scenarios[0]
        .total
        .recall
        .clone()
        .expect("recall sampled");
    println!(
        "recall {:.4} over {} queries",
        recall.mean(),
        recall.queries
    );
    assert!(recall.queries >= QUERIES as u64, "{recall:?}");
    recall
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_against_the_files_neighbours_is_the_exact_recall_and_half_wrong_ones_halve_it() {
    let Some(dir) = written("recall_against_the_files_neighbours") else {
        return;
    };
    let dir = dir.path();
    let data = tempfile::tempdir().expect("tempdir");
    let train = dir.join("train.npy").display().to_string();
    let server = server(data.path(), &["--preload-from", &train]).await;
    let spec = |neighbors: Option<&str>| Spec {
        path: Some(dir.join("train.npy")),
        queries: Some(dir.join("test.npy")),
        neighbors: neighbors.map(|n| dir.join(n)),
        query_texts: None,
        order: Order::File,
    };
    let file = searches(&server.target, spec(Some("neighbors.npy"))).await;
    let exact = searches(&server.target, spec(None)).await;
    let half = searches(&server.target, spec(Some("neighbors_half_wrong.npy"))).await;
    assert!(
        (file.mean() - exact.mean()).abs() <= 0.01,
        "the file's neighbours {} vs the server's exact answer {}",
        file.mean(),
        exact.mean()
    );
    assert!(file.mean() >= 0.9, "{}", file.mean());
    assert!(
        (half.mean() - file.mean() / 2.0).abs() <= 0.05,
        "half-wrong neighbours {} vs {} / 2",
        half.mean(),
        file.mean()
    );
    server.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_files_dataset_is_ingested_and_judged_by_its_neighbours() {
    let Some(dir) = written("a_scenario_files_dataset_is_ingested") else {
        return;
    };
    let dir = dir.path();
    let data = tempfile::tempdir().expect("tempdir");
    let server = server(data.path(), &[]).await;
    let file = r#"
[target]
builtin = "vecrig.v1"
dimensions = 8
metric = "l2"

[dataset]
path = "ann.hdf5"
order = "sampled"

[[scenario]]
name = "searches"
model = "closed"
start = 2
stages = "800ms:2"
workload = "vector"
ingest = { batch = 50, writers = 2 }
"#;
    let planned = vecrig_loadgen::plan::file::Planned::parse(file, Profile::Quick)
        .expect("the file parses")
        .relative_to(dir);
    let mut options = RunOptions::new(server.target.clone());
    options.recall_sample = 1.0;
    let report =
        vecrig_loadgen::run_file(&options, &planned, &Plan::new(Vec::new()), &Stop::default())
            .await
            .expect("pre-flight");
    let ingest = &report.scenarios[0].phases[0];
    assert_eq!(ingest.name, "ingest");
    assert_eq!(
        ingest.written,
        Some(POINTS as u64),
        "every train point written"
    );
    let recall = recall_of(&report);
    assert!(recall.mean() >= 0.9, "{}", recall.mean());

    // A target of another width is refused before any load, naming the file.
    let wrong = file.replace("dimensions = 8", "dimensions = 16");
    let planned = vecrig_loadgen::plan::file::Planned::parse(&wrong, Profile::Quick)
        .expect("the file parses")
        .relative_to(dir);
    let error =
        vecrig_loadgen::run_file(&options, &planned, &Plan::new(Vec::new()), &Stop::default())
            .await
            .expect_err("16 != 8")
            .to_string();
    assert!(
        error.contains("ann.hdf5") && error.contains("8 dimensions, 16 expected"),
        "{error}"
    );
    server.stop(Duration::from_secs(10)).await;
}
