//! The specification's five stress tests, run for real: each boots a server on 127.0.0.1:0
//! with its own data directory holding a preloaded index, runs the scenario through the
//! loadgen library over the network, and asserts the specification's pass criteria on the
//! report, plus graceful degradation: no INTERNAL/UNKNOWN answers, the server healthy and
//! answering normally afterwards.
//!
//! `VECRIG_STRESS_PROFILE=full` runs the specification's sizes and durations (100k points,
//! 5-minute sustained load, ...); the default quick profile scales durations down.
//! The tests take turns: they measure one server each on a shared 2-core machine.

use std::time::Duration;

use crate::common::TestServer;
use tonic_health::pb::health_check_response::ServingStatus;
use vecrig::client::ConnectOptions;
use vecrig::validation::StressTester;
use vecrig::validation::criteria;
use vecrig::validation::report::ScenarioReport;
use vecrig_loadgen::plan::suite::{
    ExtremeConcurrency, MemoryPressure, Profile, ResourceExhaustion, Scale, Sustained,
};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

const DIMS: usize = 128;

static TAKE_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn profile() -> Profile {
    match std::env::var("VECRIG_STRESS_PROFILE").as_deref() {
        Ok("full") => Profile::Full,
        _ => Profile::Quick,
    }
}

fn full() -> bool {
    profile() == Profile::Full
}

async fn boot() -> TestServer {
    let points = if full() { 100_000 } else { 10_000 };
    crate::common::start_preloaded(DIMS, points, |_| {}).await
}

/// Runs one scenario against `server` and checks what every stress run must keep.
async fn run(server: &TestServer, spec: ScenarioSpec) -> ScenarioReport {
    let mut options = RunOptions::new(server.target());
    options.connect = ConnectOptions {
        connections: 8,
        ..ConnectOptions::default()
    };
    let report = vecrig_loadgen::run(&options, &Plan::new(vec![spec]), &Stop::default())
        .await
        .expect("pre-flight passes against a healthy server");
    assert_eq!(report.scenarios.len(), 1);
    let scenario = report.scenarios.into_iter().next().expect("one scenario");
    print!("{}", {
        let mut out = String::new();
        vecrig_loadgen::report::text::render_scenario(&mut out, &scenario);
        out
    });
    assert!(
        criteria::graceful_violations(&scenario).is_empty(),
        "{:?}",
        criteria::graceful_violations(&scenario)
    );
    assert_eq!(scenario.total.server_faults(), 0);
    assert!(scenario.total.requests > 0);
    let failed: Vec<_> = scenario.thresholds.iter().filter(|t| !t.passed).collect();
    assert!(scenario.passed, "thresholds failed: {failed:?}");
    still_serving(server).await;
    scenario
}

/// After the load: healthy, and a normal query answers promptly with results.
async fn still_serving(server: &TestServer) {
    let tester = StressTester::connect(&server.target(), &ConnectOptions::default())
        .await
        .expect("connect")
        .with_deadline(Duration::from_secs(5));
    assert_eq!(
        tester.health().await.expect("health"),
        ServingStatus::Serving
    );
    let hits = tester
        .search("vector search after the storm")
        .await
        .expect("a normal search succeeds after the load")
        .hits;
    assert_eq!(hits.len(), 10);
    let stats = tester.stats().await.expect("stats");
    assert_eq!(stats.queued, 0, "nothing left waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_extreme_concurrency_stress() {
    let _turn = TAKE_TURNS.lock().await;
    let server = boot().await;
    let params = if full() {
        ExtremeConcurrency::full()
    } else {
        ExtremeConcurrency::quick()
    };
    let report = run(&server, ScenarioSpec::ExtremeConcurrency(params.clone())).await;
    // The specification: 1000+ concurrent users, 95%+ success, 500+ QPS.
    assert!(report.total.concurrency >= 1000);
    assert_eq!(
        report.total.requests,
        params.users * params.queries_per_user
    );
    assert!(report.total.success_rate() >= 0.95);
    assert!(report.total.qps >= 500.0, "{}", report.total.qps);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_memory_pressure_stress() {
    let _turn = TAKE_TURNS.lock().await;
    let server = boot().await;
    let params = if full() {
        MemoryPressure::full()
    } else {
        MemoryPressure::quick()
    };
    let report = run(&server, ScenarioSpec::MemoryPressure(params)).await;
    // The specification: under 1 GB of growth; judged on the server's own memory.
    assert!(report.server.samples >= 2, "server memory was sampled");
    assert!(report.server.rss_start_bytes > 0);
    assert!(
        report.server.rss_growth_bytes() < 1_000_000_000,
        "server grew {} bytes",
        report.server.rss_growth_bytes()
    );
    assert!(
        report.loadgen.max_rss_bytes > 0,
        "the loadgen reports its own memory"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sustained_load_stress() {
    let _turn = TAKE_TURNS.lock().await;
    let server = boot().await;
    let params = if full() {
        Sustained::full()
    } else {
        Sustained::quick()
    };
    let target = params.rate;
    let report = run(&server, ScenarioSpec::Sustained(params)).await;
    // The specification: 80%+ of the target rate, at most 5% errors, mean latency <= 500 ms.
    assert!(report.total.qps >= target * 0.8, "{}", report.total.qps);
    assert!(report.total.error_rate() <= 0.05);
    assert!(report.total.success_latency.mean_ms <= 500.0);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_resource_exhaustion_recovery() {
    let _turn = TAKE_TURNS.lock().await;
    let server = boot().await;
    let params = ResourceExhaustion::full();
    let report = run(&server, ScenarioSpec::ResourceExhaustion(params.clone())).await;
    // The specification: 70%+ of requests answered before their deadline.
    assert_eq!(report.total.requests, params.requests);
    assert!(report.total.completion_rate() >= 0.7);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_rapid_scale_up_down() {
    let _turn = TAKE_TURNS.lock().await;
    let server = boot().await;
    let params = if full() {
        Scale::full()
    } else {
        Scale::quick()
    };
    let report = run(&server, ScenarioSpec::Scale(params.clone())).await;
    // The specification: at most 10% errors in every phase, and recovery after scaling.
    assert_eq!(report.phases.len(), params.phases.len());
    for phase in &report.phases {
        assert!(
            phase.error_rate() <= 0.1,
            "{}: {}",
            phase.name,
            phase.error_rate()
        );
    }
    assert!(
        report
            .thresholds
            .iter()
            .any(|t| t.expression.starts_with("recovered") && t.passed)
    );
    server.stop().await.expect("clean stop");
}
