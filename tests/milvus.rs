//! A real vector database as the target: Milvus Lite (PyPI `milvus-lite`), a Milvus server
//! speaking Milvus's own gRPC API, started here on 127.0.0.1 (`tests/milvus/serve.py`), its
//! descriptors a descriptor set taken from the installed pymilvus at test time. The loadgen
//! sets up a collection through the built-in `milvus` set's own setup calls, ingests through
//! its column-wise Insert, searches through its Search (the query vector as bytes inside an
//! encoded PlaceholderGroup), and what it counted is checked against what Milvus holds,
//! asked with the official client (`tests/milvus/count.py`).
//!
//! Milvus answers failures with gRPC OK and the error in the body: a refused write and a
//! search of a missing collection must be counted as failures (ANSWER_ERROR) with their
//! reasons, fail an error_rate threshold, and ingest must report nothing written.
//!
//! Needs Python with `milvus-lite` and `pymilvus` (`scripts/test` installs them). Without them
//! the tests print SKIPPED, except under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vecrig::validation::report::{ANSWER_ERROR, Report};
use vecrig_loadgen::plan::file::Planned;
use vecrig_loadgen::plan::suite::Profile;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions};

const DIMENSIONS: usize = 16;
const POINTS: u64 = 3000;
const BATCH: u64 = 100;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/milvus")
}

/// Whether Python has Milvus Lite and pymilvus; without them the test is skipped (and
/// fails under CI=true).
fn milvus_or_skip(test: &str) -> bool {
    crate::common::python_or_skip(
        test,
        "milvus_lite.adapter.grpc.server, pymilvus",
        "python with milvus-lite and pymilvus is needed (`scripts/test` installs them in \
         target/pyenv)",
    )
}

/// Milvus Lite serving from a data directory of its own until dropped (its stdin closes;
/// `kill_on_drop` too), and the descriptor set of its API beside it.
struct Milvus {
    server: crate::common::PythonServer,
    dir: tempfile::TempDir,
}

impl Milvus {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let protoset = dir.path().join("milvus.protoset");
        let server = crate::common::PythonServer::start(
            &fixture_dir().join("serve.py"),
            &[data.as_os_str(), protoset.as_os_str()],
        )
        .await;
        Self { server, dir }
    }

    fn target(&self) -> String {
        format!("http://{}", self.server.address)
    }

    /// What the server holds in `collection`, asked with pymilvus.
    fn count(&self, collection: &str) -> serde_json::Value {
        let out = std::process::Command::new(crate::common::python())
            .arg(fixture_dir().join("count.py"))
            .arg(&self.server.address)
            .arg(collection)
            .output()
            .expect("run count.py");
        assert!(
            out.status.success(),
            "count.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("count.py prints JSON")
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

/// The file a user writes: the built-in set, the collection, and an exact index so that
/// recall can be held to 1.
fn target_table(extra: &str) -> String {
    format!(
        r#"[target]
builtin = "milvus"
protoset = "milvus.protoset"
dimensions = {DIMENSIONS}
metric = "l2"
collection = "vecrig_test"
index = "FLAT"
first_id = 1
vars = {{ index_params = "{{}}", search_params = "{{}}" }}
{extra}
"#
    )
}

async fn run(milvus: &Milvus, file: &str) -> Report {
    let planned = Planned::parse(file, Profile::Quick)
        .expect("the file parses")
        .relative_to(milvus.dir.path());
    let mut options = RunOptions::new(milvus.target());
    options.recall_sample = 0.25;
    options.threads = 1;
    options.wait_healthy = Duration::from_secs(10);
    vecrig_loadgen::run_file(&options, &planned, &Plan::new(Vec::new()), &Stop::default())
        .await
        .expect("the run starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milvus_is_set_up_ingested_and_searched_with_counts_that_match_what_it_holds() {
    if !milvus_or_skip(
        "milvus_is_set_up_ingested_and_searched_with_counts_that_match_what_it_holds",
    ) {
        return;
    }
    let milvus = Milvus::start().await;
    // Milvus Lite's collections take one writer at a time.
    let file = format!(
        r#"{}
[[scenario]]
name = "milvus"
model = "open"
start = 40
stages = "4s:40"
max_in_flight = 32
ingest = {{ points = {POINTS}, batch = {BATCH}, writers = 1 }}
thresholds = ["recall>=0.99", "error_rate==0"]
"#,
        target_table("")
    );
    let report = run(&milvus, &file).await;
    let scenario = &report.scenarios[0];
    let ingest = &scenario.phases[0];
    let search = &scenario.phases[1];
    assert_eq!(ingest.name, "ingest");
    let held = milvus.count("vecrig_test");
    let rows = held["rows"].as_u64().expect("rows");
    assert_eq!(
        ingest.written,
        Some(rows),
        "the points the loadgen counts as written are the rows Milvus holds: {held}"
    );
    assert_eq!(rows, POINTS, "every point written once: {held}");
    assert_eq!(
        held["distinct_ids"].as_u64(),
        Some(POINTS),
        "no duplicate keys"
    );
    assert_eq!(
        ingest.successes * BATCH + BATCH,
        POINTS,
        "the ingest phase's OK batches, and the probe's, are the data set"
    );
    // The open model sends 160 searches on schedule; on a loaded machine some arrivals find
    // every slot taken and are dropped, never sent: what was sent was served.
    assert!(
        search.successes >= 40,
        "searches served: {}",
        search.successes
    );
    assert_eq!(search.successes, search.requests, "{:?}", search.codes);
    assert_eq!(search.code(ANSWER_ERROR), 0, "{:?}", search.failures);
    let recall = search.recall.as_ref().expect("recall measured");
    assert!(recall.queries >= 20, "sampled searches: {}", recall.queries);
    assert!(recall.mean() >= 0.99, "recall {}", recall.mean());
    assert!(report.passed, "{:?}", scenario.thresholds);
    milvus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milvus_errors_inside_ok_answers_are_failures_with_their_reasons() {
    if !milvus_or_skip("milvus_errors_inside_ok_answers_are_failures_with_their_reasons") {
        return;
    }
    let milvus = Milvus::start().await;
    // A write that claims one row more than it sends, and searches of a collection that
    // does not exist: Milvus answers both with gRPC OK and the error in `status`.
    let wrong = r#"
[target.write]
method = "milvus.proto.milvus.MilvusService/Insert"
[target.write.request]
collection_name = "{{collection}}"
num_rows = 7
fields_data = [
  { field_name = "id", type = "Int64", scalars = { long_data = { data = "{{ids}}" } } },
  { field_name = "vector", type = "FloatVector", vectors = { dim = "{{dimensions}}", float_vector = { data = "{{vectors}}" } } },
]
"#;
    let file = format!(
        r#"{}
[[scenario]]
name = "refused"
model = "open"
start = 20
stages = "2s:20"
max_in_flight = 8
ingest = {{ points = 200, batch = 20, writers = 1 }}
thresholds = ["error_rate<=0.01"]
"#,
        target_table(wrong)
    );
    let report = run(&milvus, &file).await;
    let scenario = &report.scenarios[0];
    let ingest = &scenario.phases[0];
    assert_eq!(ingest.written, Some(0), "nothing was written");
    assert_eq!(ingest.successes, 0);
    assert_eq!(ingest.code(ANSWER_ERROR), ingest.requests);
    assert_eq!(ingest.requests, 10, "every batch tried once");
    assert!(
        ingest.failures.keys().any(|r| r.contains("rows")),
        "the reason is Milvus's own: {:?}",
        ingest.failures
    );
    assert!(!report.passed, "the error_rate threshold fails: exit 99");
    assert!(
        scenario
            .thresholds
            .iter()
            .any(|t| t.expression.starts_with("error_rate") && !t.passed)
    );
    assert_eq!(milvus.count("vecrig_test")["rows"].as_u64(), Some(0));

    // Searches of a collection that is not there.
    let file = target_table("")
        + r#"
[target.search]
method = "milvus.proto.milvus.MilvusService/Search"
ids = "results.ids.int_id.data[]"
[target.search.request]
collection_name = "no_such_collection"
dsl_type = "BoolExprV1"
nq = 1
search_params = [
  { key = "anns_field", value = "vector" },
  { key = "topk", value = "{{k}}" },
  { key = "metric_type", value = "{{metric}}" },
]
[target.search.request.placeholder_group]
"@encode" = "milvus.proto.common.PlaceholderGroup"
placeholders = [{ tag = "$0", type = "FloatVector", values = ["{{vector}}"] }]

[[scenario]]
name = "missing"
model = "open"
start = 20
stages = "2s:20"
thresholds = ["error_rate<=0.01"]
"#;
    let report = run(&milvus, &file).await;
    let phase = &report.scenarios[0].phases[0];
    assert!(phase.requests >= 20, "searches sent: {}", phase.requests);
    assert_eq!(phase.successes, 0);
    assert_eq!(phase.code(ANSWER_ERROR), phase.requests);
    assert!(
        phase
            .failures
            .keys()
            .any(|r| r.contains("no_such_collection")),
        "{:?}",
        phase.failures
    );
    assert!(!report.passed);
    assert!(
        report.warnings.iter().any(|w| w.contains("answer check")),
        "the probe's failed answer is said before the load: {:?}",
        report.warnings
    );
    milvus.stop().await;
}
