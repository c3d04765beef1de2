//! A vector service whose proto vecrig did not design, in another language: a Python grpcio
//! store with numpy brute-force search (`tests/dynamic/store_server.py`), started here on
//! 127.0.0.1 with reflection on. The loadgen reads its descriptors by reflection (or from
//! its `.proto`), ingests a seeded data set through a write template, searches through a
//! search template, computes recall itself (1.0 against an exact service) and judges the
//! thresholds; templates that do not fit are refused before any load, naming the field.
//!
//! Needs Python with `grpcio grpcio-tools grpcio-health-checking grpcio-reflection numpy`
//! (`scripts/test` installs them in the project's own virtual environment). Without them the tests print SKIPPED, except under `CI=true`, where
//! they fail: CI must not pass by skipping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vecrig_loadgen::plan::file::Planned;
use vecrig_loadgen::plan::suite::Profile;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::target::PreflightError;
use vecrig_loadgen::{Plan, RunOptions};

const DIMENSIONS: usize = 16;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dynamic")
}

/// Whether Python has what the fixture needs; without it the test is skipped (and fails
/// under CI=true).
fn python_or_skip(test: &str) -> bool {
    crate::common::python_or_skip(
        test,
        "grpc, grpc_tools, grpc_health.v1, grpc_reflection.v1alpha, numpy",
        "python with grpcio, grpcio-tools, grpcio-health-checking, grpcio-reflection and numpy \
         is needed (`scripts/test` installs them in target/pyenv)",
    )
}

/// The Python store, serving until dropped.
async fn start_store() -> crate::common::PythonServer {
    let dir = fixture_dir();
    let dimensions = DIMENSIONS.to_string();
    crate::common::PythonServer::start(
        &dir.join("store_server.py"),
        &[dir.as_os_str(), dimensions.as_ref()],
    )
    .await
}

const SEARCH: &str = r#"search = { method = "fixture.store.v2.EmbeddingStore/Nearest", ids = "result[].key", request = '''
  {"collection": "docs", "query": {"embedding": "{{vector}}"}, "limit": "{{k}}", "ranking": "RANKING_EXACT"} ''' }"#;
const WRITE: &str = r#"write = { method = "fixture.store.v2.EmbeddingStore/PutItems", request = '''
  {"collection": "docs", "items": [{"key": "{{id}}", "embedding": "{{vector}}", "note": "{{payload}}"}]} ''' }"#;

fn target_table(dimensions: usize, search: &str, write: &str, protos: bool) -> String {
    let protos = if protos {
        "protos = [\"store.proto\"]\n"
    } else {
        ""
    };
    format!(
        "[target]\ndimensions = {dimensions}\nmetric = \"l2\"\nfirst_id = 1000\n{protos}{search}\n{write}\n"
    )
}

const SCENARIO: &str = r#"
[[scenario]]
name = "store"
model = "closed"
start = 4
stages = "2s:4"
ingest = { points = 1500, batch = 50, writers = 4 }
thresholds = ["recall>=1", "error_rate==0", "p99<2s"]
"#;

async fn run(
    target: &str,
    file: &str,
    recall_sample: f64,
) -> Result<vecrig::validation::report::Report, PreflightError> {
    let planned = Planned::parse(file, Profile::Quick)
        .expect("the file parses")
        .relative_to(&fixture_dir());
    let mut options = RunOptions::new(target);
    options.recall_sample = recall_sample;
    options.threads = 2;
    options.wait_healthy = Duration::from_secs(10);
    vecrig_loadgen::run_file(&options, &planned, &Plan::new(Vec::new()), &Stop::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_we_did_not_design_is_ingested_searched_and_judged_by_our_own_recall() {
    if !python_or_skip(
        "a_service_we_did_not_design_is_ingested_searched_and_judged_by_our_own_recall",
    ) {
        return;
    }
    let store = start_store().await;
    let file = format!(
        "{}{SCENARIO}",
        target_table(DIMENSIONS, SEARCH, WRITE, false)
    );
    let report = run(&format!("http://{}", store.address), &file, 0.5)
        .await
        .expect("the run starts");
    let mut out = String::new();
    vecrig_loadgen::report::text::render_scenario(&mut out, &report.scenarios[0]);
    print!("{out}");
    let scenario = &report.scenarios[0];
    let ingest = &scenario.phases[0];
    assert_eq!(ingest.name, "ingest");
    // 1500 points in batches of 50: 30 writes, every one acknowledged; the first is the
    // pre-flight probe's, which the ingest does not write again.
    assert_eq!(ingest.requests, 29, "{ingest:?}");
    assert_eq!(ingest.successes, 29);
    assert_eq!(ingest.written, Some(1500), "every point written once");
    let search = &scenario.phases[1];
    assert!(search.requests > 20, "{search:?}");
    assert_eq!(search.successes, search.requests);
    let recall = search.recall.as_ref().expect("recall was sampled");
    assert!(recall.queries > 10, "{recall:?}");
    assert_eq!(
        recall.mean(),
        1.0,
        "an exact service, our own exact answers: {recall:?}"
    );
    assert!(
        scenario
            .thresholds
            .iter()
            .any(|t| t.expression == "recall>=1" && t.passed),
        "{:?}",
        scenario.thresholds
    );
    assert!(
        scenario.passed && report.passed,
        "{:?}",
        scenario.thresholds
    );
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_that_do_not_fit_are_refused_before_any_load_naming_the_field() {
    if !python_or_skip("templates_that_do_not_fit_are_refused_before_any_load_naming_the_field") {
        return;
    }
    let store = start_store().await;
    let swap = |from: &str, to: &str| SEARCH.replace(from, to);
    let cases = [
        // A method the service does not have (descriptors from the .proto file this time).
        (
            target_table(DIMENSIONS, &swap("/Nearest", "/Closest"), WRITE, true),
            "has no method Closest",
        ),
        // A field the message does not have.
        (
            target_table(DIMENSIONS, &swap("\"limit\"", "\"top_k\""), WRITE, false),
            "`top_k`: no such field in message fixture.store.v2.NearestRequest",
        ),
        // A value of the wrong type.
        (
            target_table(DIMENSIONS, &swap("\"{{k}}\"", "\"ten\""), WRITE, false),
            "`limit`: expected int32, got \"ten\"",
        ),
        (
            target_table(
                DIMENSIONS,
                SEARCH,
                &WRITE.replace("\"{{id}}\"", "\"{{vector}}\""),
                false,
            ),
            "`items[0].key`: {{vector}} needs a repeated float or double field",
        ),
        (
            target_table(
                DIMENSIONS,
                &swap("RANKING_EXACT", "RANKING_FUZZY"),
                WRITE,
                false,
            ),
            "`ranking`: \"RANKING_FUZZY\" is not a value of enum fixture.store.v2.Ranking",
        ),
        // A vector width the service rejects: found by the probe, before the load.
        (
            target_table(DIMENSIONS * 2, SEARCH, WRITE, false),
            "INVALID_ARGUMENT",
        ),
    ];
    for (table, mentions) in cases {
        let file = format!("{table}{SCENARIO}");
        let error = run(&format!("http://{}", store.address), &file, 0.5)
            .await
            .expect_err("refused before any load");
        let text = error.to_string();
        assert!(matches!(error, PreflightError::Templated(_)), "{text}");
        let text = text.replace("InvalidArgument", "INVALID_ARGUMENT");
        assert!(text.contains(mentions), "expected {mentions:?} in: {text}");
    }
    store.stop().await;
}
