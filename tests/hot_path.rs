//! The loadgen's own HTTP/2 request path against a real server: a graceful restart mid-run
//! loses no request from the counts and is seen as UNAVAILABLE (never UNKNOWN), the loadgen
//! reconnects by itself, and the same seed sends the same requests with one or two threads,
//! or over tonic's connections.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::TestServer;
use tokio::sync::oneshot;
use vecrig::proto::GetRequest;
use vecrig_loadgen::plan::scenario::{Model, Phase, Scenario};
use vecrig_loadgen::plan::workload::{WRITE_ID_BASE, Workload, WorkloadKind};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::wire::Transport;
use vecrig_loadgen::{RunOptions, run_with};

fn scenario(
    name: &str,
    workload: std::sync::Arc<Workload>,
    phases: Vec<(&str, Model)>,
) -> Scenario {
    Scenario {
        name: name.into(),
        description: String::new(),
        parameters: Default::default(),
        phases: phases
            .into_iter()
            .map(|(name, model)| Phase {
                name: name.into(),
                model,
            })
            .collect(),
        workload,
        thresholds: Vec::new(),
        monitor_every: None,
        check_recovery: false,
        timeout: None,
        identities: Vec::new(),
    }
}

fn closed(users: u64, iterations: u64, think: Duration) -> Model {
    Model::Closed {
        users,
        iterations: Some(iterations),
        duration: None,
        think,
        stagger: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_mid_run_loses_no_request_and_is_unavailable_not_unknown() {
    let (config, _temp) = TestServer::config(8);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_first, stopped) = oneshot::channel::<()>();
    let first = tokio::spawn(vecrig_server::serve(listener, config.clone(), async {
        let _ = stopped.await;
    }));
    let (stop_second, second_stopped) = oneshot::channel::<()>();
    let restarter = tokio::spawn(async move {
        // Pre-flight waits for SERVING; restart well inside the first phase.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = stop_first.send(());
        first.await.expect("first server").expect("drained");
        // The same address, the same data: a graceful restart.
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        vecrig_server::serve(listener, config, async {
            let _ = second_stopped.await;
        })
        .await
    });

    let mut options = RunOptions::new(format!("http://{addr}"));
    options.timeout = Duration::from_secs(10);
    options.threads = 2;
    let workload = Workload::new(WorkloadKind::Vector, 8, 42, 10);
    let (users, iterations) = (8, 400);
    let run = scenario(
        "restart",
        workload,
        vec![
            (
                "through-restart",
                closed(users, iterations, Duration::from_millis(5)),
            ),
            ("after", closed(4, 25, Duration::ZERO)),
        ],
    );
    let report = run_with(&options, 42, &Stop::default(), |_| vec![run])
        .await
        .expect("pre-flight");
    let mut out = String::new();
    vecrig_loadgen::report::text::render_scenario(&mut out, &report.scenarios[0]);
    print!("{out}");
    let _ = stop_second.send(());
    restarter.await.expect("restarter").expect("second server");

    let (through, after) = (
        &report.scenarios[0].phases[0],
        &report.scenarios[0].phases[1],
    );
    // Every request is counted, with an outcome.
    assert_eq!(through.requests, users * iterations, "{:?}", through.codes);
    assert_eq!(through.latency.count, through.requests);
    // A server that went away is UNAVAILABLE; nothing is UNKNOWN or INTERNAL.
    for code in through.codes.keys().chain(through.first_try_codes.keys()) {
        assert!(
            ["OK", "UNAVAILABLE"].contains(&code.as_str()),
            "{code} in {:?} / first tries {:?}",
            through.codes,
            through.first_try_codes
        );
    }
    assert!(through.successes > 0);
    // And the loadgen found the restarted server by itself.
    assert_eq!(after.requests, 100);
    assert_eq!(after.successes, 100, "{:?}", after.codes);
    assert!(
        !report.scenarios[0]
            .warnings
            .iter()
            .any(|w| w.contains("not graceful")),
        "{:?}",
        report.scenarios[0].warnings
    );
}

/// Every point the phases below may have written: users, workers and open-model streams are
/// below 60, each sends at most 10 requests, each an upsert of 2 points.
fn candidate_ids() -> impl Iterator<Item = u64> {
    (0..60u64).flat_map(|user| (0..20u64).map(move |j| WRITE_ID_BASE + (user << 24) + j))
}

/// One thread, two, and tonic's connections in place of the loadgen's own: every request is
/// rendered from the same templates, so each writes the very same points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_sends_the_same_requests_with_one_or_two_threads_or_over_tonic() {
    let mut written = Vec::new();
    for (threads, transport) in [
        (1, Transport::H2),
        (2, Transport::H2),
        (1, Transport::Tonic),
    ] {
        let (config, temp) = TestServer::config(8);
        let server = TestServer::start_in(config, temp).await;
        let mut options = RunOptions::new(server.target());
        options.timeout = Duration::from_secs(10);
        options.threads = threads;
        options.transport = transport;
        options.retry.max_attempts = 1;
        let kind = WorkloadKind::Mixed {
            upsert_fraction: 1.0,
            batch: 2,
        };
        let workload = Workload::new(kind, 8, 7, 10);
        let second = Duration::from_secs(1);
        let run = scenario(
            "writes",
            workload,
            vec![
                ("closed", closed(3, 4, Duration::ZERO)),
                (
                    "open",
                    Model::Open {
                        from: 40.0,
                        to: 40.0,
                        duration: second,
                        max_in_flight: 100,
                    },
                ),
                (
                    "paced",
                    Model::Paced {
                        workers: 3,
                        rate: 30.0,
                        duration: second,
                    },
                ),
            ],
        );
        let report = run_with(&options, 7, &Stop::default(), |_| vec![run])
            .await
            .expect("pre-flight");
        let phases = &report.scenarios[0].phases;
        let sent: Vec<u64> = phases.iter().map(|p| p.successes).collect();
        assert_eq!(
            sent,
            [12, 40, 30],
            "{threads} threads, {transport:?}: {phases:?}"
        );
        // Read back everything that may have been written, as the server holds it.
        let mut client = server.client().await;
        let mut points = BTreeMap::new();
        for id in candidate_ids() {
            if let Ok(found) = client.get(GetRequest { id }).await {
                let point = found.into_inner().point.expect("a point");
                let payload: BTreeMap<_, _> = point.payload.into_iter().collect();
                points.insert(id, format!("{:?} {payload:?}", point.data));
            }
        }
        server.stop().await.expect("stop");
        written.push(points);
    }
    assert!(written[0].len() >= 80, "{} points", written[0].len());
    assert_eq!(written[0], written[1], "one thread vs two");
    assert_eq!(
        written[0], written[2],
        "the loadgen's own HTTP/2 vs tonic's"
    );
}
