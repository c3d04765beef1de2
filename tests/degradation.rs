//! Graceful degradation, asserted: the server is pushed to several times what it can serve,
//! and must shed the excess at once with RESOURCE_EXHAUSTED, serve what it admits with bounded
//! latency, keep most of its capacity as goodput, stay healthy, keep its memory, and return
//! to its unloaded latency once the overload ends.
//!
//! Capacity is measured in the same test, on the same machine, moments before the overload:
//! every limit below is relative to it, so a slower or busier machine moves both together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use vecrig::client::ConnectOptions;
use vecrig::validation::StressTester;
use vecrig::validation::report::PhaseReport;
use vecrig_loadgen::plan::scenario::{Model, Phase, Scenario};
use vecrig_loadgen::plan::workload::{Workload, WorkloadKind};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::scheduler::retry::RetryPolicy;
use vecrig_loadgen::{RunOptions, run_with};

const DIMS: usize = 128;
const POINTS: u64 = 20_000;
/// Offered load during the overload, as a multiple of measured capacity.
const OVERLOAD: f64 = 3.0;
/// Goodput at ten times capacity, as a share of capacity, that the server must keep. The
/// loadgen shares this process and both cores with the server, and at 10x it sends some
/// 30,000 requests a second, so the figure is the machine's as much as the server's. The
/// degradation bench, loadgen pinned away from the server, is where 10x is measured against
/// the 0.8 (`docs/overload.md`); this floor catches a collapse.
const TEN_X_FLOOR: f64 = 0.35;

fn scenario(name: &str, model: Model, workload: &Arc<Workload>) -> Scenario {
    Scenario {
        name: name.to_string(),
        description: name.to_string(),
        parameters: BTreeMap::new(),
        phases: vec![Phase {
            name: name.to_string(),
            model,
        }],
        workload: Arc::clone(workload),
        thresholds: Vec::new(),
        monitor_every: None,
        check_recovery: false,
        timeout: None,
        identities: Vec::new(),
    }
}

async fn run_one(options: &RunOptions, s: Scenario) -> PhaseReport {
    let report = run_with(options, 42, &Stop::default(), |_| vec![s])
        .await
        .expect("pre-flight");
    let scenario = report.scenarios.into_iter().next().expect("one scenario");
    let mut out = String::new();
    vecrig_loadgen::report::text::render_scenario(&mut out, &scenario);
    print!("{out}");
    scenario.phases.into_iter().next().expect("one phase")
}

/// Answers that were neither served (OK) nor shed (RESOURCE_EXHAUSTED): under overload there
/// must be none.
fn neither_served_nor_shed(phase: &PhaseReport) -> u64 {
    phase
        .codes
        .iter()
        .filter(|(code, _)| !matches!(code.as_str(), "OK" | "RESOURCE_EXHAUSTED"))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: the degradation curve under 3x overload (scripts/test --heavy)"]
async fn overload_is_shed_gracefully_and_the_server_recovers() {
    // A small admission window, so that overload is visible as shedding, not only queueing.
    let server = crate::common::start_preloaded(DIMS, POINTS, |c| {
        c.admission.concurrency_limit = 2;
        c.admission.queue_depth = 16;
        // 4 refusals of work earned per request served, not the default 3: the loadgen shares
        // this process and both cores, so the server serves less than the capacity measured
        // before, and 3x then sits at the edge of pacing; once paced, the loadgen's requests
        // wait in its sockets, fewer are served, fewer refusals are earned, and pacing feeds on
        // itself (`docs/overload.md`). What this test asserts is clean shedding at 3x.
        c.pacing.shed_per_served = 4.0;
    })
    .await;
    let mut options = RunOptions::new(server.target());
    options.connect = ConnectOptions {
        connections: 8,
        ..ConnectOptions::default()
    };
    options.timeout = Duration::from_secs(10);
    // No retries: the server's raw answers are what is judged here.
    options.retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    // Exact scans: each request costs the server a millisecond or more, so a few thousand
    // requests per second overload it without the loadgen needing the whole machine.
    let workload = Workload::new(WorkloadKind::ExactVector, DIMS, 42, 10);

    // 1. Capacity: enough closed-loop users to keep every slot busy, none shed. Measured again
    // at the end, and averaged: this machine is shared, and noise moves single measurements.
    let saturate = |name: &str| {
        scenario(
            name,
            Model::Closed {
                users: 12,
                iterations: None,
                duration: Some(Duration::from_secs(3)),
                think: Duration::ZERO,
                stagger: None,
            },
            &workload,
        )
    };
    let capacity = run_one(&options, saturate("capacity")).await;
    assert_eq!(
        capacity.code("RESOURCE_EXHAUSTED"),
        0,
        "12 users fit limit 2 + queue 16"
    );
    let capacity_qps = capacity.qps;
    assert!(capacity_qps > 50.0, "capacity {capacity_qps}");

    // 2. Unloaded latency, at a fifth of capacity.
    let light = |name: &str| {
        scenario(
            name,
            Model::Paced {
                workers: 4,
                rate: capacity_qps * 0.2,
                duration: Duration::from_secs(3),
            },
            &workload,
        )
    };
    let unloaded = run_one(&options, light("unloaded")).await;
    assert_eq!(unloaded.error_rate(), 0.0);

    // 3. Overload: several times capacity, sent on schedule whatever the answers.
    let health_probe = {
        let target = server.target();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let tester = StressTester::connect(&target, &ConnectOptions::default())
                .await
                .expect("connect during overload")
                .with_deadline(Duration::from_secs(2));
            (tester.health().await, tester.stats().await)
        })
    };
    let overload = run_one(
        &options,
        scenario(
            "overload",
            Model::Paced {
                workers: 400,
                rate: capacity_qps * OVERLOAD,
                duration: Duration::from_secs(5),
            },
            &workload,
        ),
    )
    .await;

    // Only two answers are allowed under overload: served, or shed.
    assert_eq!(
        neither_served_nor_shed(&overload),
        0,
        "only OK and RESOURCE_EXHAUSTED: {:?}",
        overload.codes
    );
    let shed = overload.code("RESOURCE_EXHAUSTED");
    assert!(shed > 0, "the excess is shed");
    assert!(
        overload.shed_rate() > 0.3,
        "most of {OVERLOAD}x is excess: {}",
        overload.shed_rate()
    );
    assert_eq!(
        overload.server.shed, shed,
        "the server counts every refusal it made"
    );
    // Shed at once: a refusal costs no queueing.
    assert!(
        overload.shed_latency.p99_ms < 100.0,
        "shed answers p99 {} ms",
        overload.shed_latency.p99_ms
    );
    // Admitted requests wait at most a bounded queue: 16 waiting for 2 slots.
    let bound_ms = (capacity.success_latency.p99_ms * 4.0).max(250.0);
    assert!(
        overload.success_latency.p99_ms <= bound_ms,
        "admitted p99 {} ms > {bound_ms} ms",
        overload.success_latency.p99_ms
    );
    // Memory stays bounded.
    assert!(
        overload.server.rss_growth_bytes() < 200_000_000,
        "server memory grew {} bytes",
        overload.server.rss_growth_bytes()
    );
    let (health, stats) = health_probe.await.expect("probe");
    assert_eq!(
        health.expect("health answers under overload"),
        ServingStatus::Serving
    );
    let stats = stats.expect("Stats answers under overload");
    assert!(stats.in_flight <= 2, "the limit holds: {}", stats.in_flight);
    assert!(
        stats.queued <= 16,
        "the queue bound holds: {}",
        stats.queued
    );

    // 3b. Ten times capacity (issue 18): past what refusing at full speed can carry, pacing
    // holds the sender's requests in its own socket, so the server keeps doing its work.
    let flood = run_one(
        &options,
        scenario(
            "overload-10x",
            Model::Paced {
                workers: 400,
                rate: capacity_qps * 10.0,
                duration: Duration::from_secs(5),
            },
            &workload,
        ),
    )
    .await;
    assert_eq!(
        neither_served_nor_shed(&flood),
        0,
        "10x: only OK and RESOURCE_EXHAUSTED: {:?}",
        flood.codes
    );
    assert!(
        flood.server.rss_growth_bytes() < 200_000_000,
        "10x: server memory grew {} bytes",
        flood.server.rss_growth_bytes()
    );

    // 4. Recovery: right after the overload, latency is back to its unloaded level.
    let after = run_one(&options, light("after")).await;
    assert_eq!(after.error_rate(), 0.0, "{:?}", after.codes);
    assert!(
        after.latency.p50_ms <= unloaded.latency.p50_ms * 2.0 + 5.0,
        "median {} ms after vs {} ms before",
        after.latency.p50_ms,
        unloaded.latency.p50_ms
    );
    assert!(
        after.latency.p99_ms <= unloaded.latency.p99_ms * 3.0 + 50.0,
        "p99 {} ms after vs {} ms before",
        after.latency.p99_ms,
        unloaded.latency.p99_ms
    );

    // Goodput: what is admitted is served; capacity is not lost to the overload. The loadgen
    // shares this process and both cores with the server, and receives every shed answer,
    // so goodput under overload depends on the machine. Half still catches a server whose
    // cores go to the work it refuses; that it sheds, and what its admitted requests wait,
    // are asserted above.
    let capacity_again = run_one(&options, saturate("capacity-again")).await;
    let capacity_mean = (capacity_qps + capacity_again.qps) / 2.0;
    println!(
        "goodput: 3x {:.0}/s ({:.2} of capacity), 10x {:.0}/s ({:.2}); capacity {capacity_mean:.0}/s",
        overload.qps,
        overload.qps / capacity_mean,
        flood.qps,
        flood.qps / capacity_mean
    );
    assert!(
        overload.qps >= 0.5 * capacity_mean,
        "goodput {:.0}/s under overload vs capacity {capacity_mean:.0}/s ({capacity_qps:.0} and {:.0})",
        overload.qps,
        capacity_again.qps
    );
    assert!(
        flood.qps >= TEN_X_FLOOR * capacity_mean,
        "goodput {:.0}/s at 10x vs capacity {capacity_mean:.0}/s",
        flood.qps
    );
    server.stop().await.expect("clean stop");
}
