//! The JSON report: its schema (names a consumer relies on), a lossless round trip, and the
//! merge of shard reports, which must count exactly what one unsharded run counts.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::TestServer;
use vecrig::validation::report::{Report, SCHEMA};
use vecrig_loadgen::plan::suite::ExtremeConcurrency;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

fn plan(shard: Option<(u64, u64)>) -> Plan {
    let mut plan = Plan::new(vec![ScenarioSpec::ExtremeConcurrency(ExtremeConcurrency {
        users: 20,
        queries_per_user: 5,
        think: Duration::ZERO,
    })]);
    plan.shard = shard;
    plan
}

async fn run(server: &TestServer, shard: Option<(u64, u64)>) -> Report {
    vecrig_loadgen::run(
        &RunOptions::new(server.target()),
        &plan(shard),
        &Stop::default(),
    )
    .await
    .expect("pre-flight")
}

fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_round_trip_and_lossless_merge() {
    let (mut config, temp) = TestServer::config(16);
    config.preload = 1000;
    let server = TestServer::start_in(config, temp).await;

    // Schema: the names consumers rely on, at every level.
    let whole = run(&server, None).await;
    let json = serde_json::to_value(&whole).expect("serialize");
    assert_eq!(json["schema"], SCHEMA);
    assert_eq!(
        keys(&json),
        set(&[
            "schema",
            "loadgen_version",
            "target",
            "seed",
            "started_unix_ms",
            "finished_unix_ms",
            "interrupted",
            "loadgen",
            "scenarios",
            "warnings",
            "passed",
        ])
    );
    let scenario = &json["scenarios"][0];
    assert_eq!(
        keys(scenario),
        set(&[
            "name",
            "description",
            "parameters",
            "duration_s",
            "phases",
            "total",
            "server",
            "thresholds",
            "loadgen",
            "warnings",
            "passed",
            "timeline",
            // Present for a scenario shorter than 10 s, as this one is.
            "fine_timeline",
            "server_timeline",
        ])
    );
    assert_eq!(
        keys(&scenario["total"]),
        set(&[
            "name",
            "concurrency",
            "duration_s",
            "requests",
            "successes",
            "qps",
            "codes",
            "first_try_codes",
            "attempts",
            "retries",
            "retries_denied",
            "dropped",
            "latency",
            "success_latency",
            "service_time",
            "shed_latency",
            "latency_by_code",
            "server",
            "histograms",
        ])
    );
    assert_eq!(
        keys(&scenario["total"]["latency"]),
        set(&[
            "count", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"
        ])
    );
    assert_eq!(
        keys(&scenario["thresholds"][0]),
        set(&["scope", "expression", "observed", "passed"])
    );
    assert!(
        scenario["total"]["histograms"]["latency"]
            .as_str()
            .is_some_and(|h| h.starts_with("HISTF")),
        "histograms are HdrHistogram's standard base64 form"
    );
    let back: Report = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, whole, "lossless round trip");

    // Two shards at once, merged, count exactly what one unsharded run counts.
    let (a, b) = tokio::join!(run(&server, Some((0, 2))), run(&server, Some((1, 2))));
    assert_eq!(a.scenarios[0].total.requests, 50);
    assert_eq!(b.scenarios[0].total.requests, 50);
    let merged = vecrig_loadgen::report::merge::merge(&[a.clone(), b.clone()]).expect("merge");
    let (m, w) = (&merged.scenarios[0], &whole.scenarios[0]);
    assert_eq!(m.total.requests, w.total.requests);
    assert_eq!(m.total.successes, w.total.successes);
    assert_eq!(m.total.codes, w.total.codes);
    assert_eq!(m.total.latency.count, w.total.latency.count);
    assert_eq!(m.total.concurrency, 20);
    assert_eq!(m.phases[0].requests, 100);
    // Percentiles come from the merged histogram, not from averaging the shards'.
    let max_of_shards = a.scenarios[0]
        .total
        .latency
        .max_ms
        .max(b.scenarios[0].total.latency.max_ms);
    assert!((m.total.latency.max_ms - max_of_shards).abs() < 0.01);
    assert_eq!(
        m.thresholds.len(),
        w.thresholds.len(),
        "thresholds judged again"
    );
    assert!(m.passed);
    assert!(vecrig_loadgen::report::merge::merge(&[]).is_err());

    // The HTML page: every chart present, self-contained.
    let html = vecrig_loadgen::report::html::render(&whole);
    assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), 6, "six charts per scenario");
    assert!(!html.contains("<script") && !html.contains("http://cdn"));
    assert!(
        whole.scenarios[0]
            .timeline
            .iter()
            .map(|p| p.requests)
            .sum::<u64>()
            == 100
    );

    // The interval log: standard HdrHistogram format, one tagged interval per phase and kind.
    let mut log = Vec::new();
    vecrig_loadgen::report::text::write_interval_log(&whole, &mut log).expect("write log");
    let mut intervals = 0;
    for entry in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&log) {
        if let Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(h)) = entry {
            let tag = h.tag().map(|t| t.as_str().to_string()).unwrap_or_default();
            let decoded =
                vecrig_loadgen::measure::histogram::decode(h.encoded_histogram()).expect("decode");
            if tag.ends_with("/latency") {
                assert_eq!(decoded.len(), 100, "{tag}");
            }
            intervals += 1;
        }
    }
    assert!(
        intervals >= 3,
        "latency, success and service intervals: {intervals}"
    );
    server.stop().await.expect("clean stop");
}
