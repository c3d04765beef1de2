//! The open and ramping models against a real server: arrivals on schedule are all accounted
//! for (sent, or dropped and counted), and ramps reach their targets.

use std::time::Duration;

use crate::common::TestServer;
use vecrig_loadgen::plan::scenario::Stage;
use vecrig_loadgen::plan::suite::{Load, LoadModel};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

async fn run(server: &TestServer, load: Load) -> Vec<vecrig::validation::report::PhaseReport> {
    let mut options = RunOptions::new(server.target());
    options.timeout = Duration::from_secs(10);
    let report = vecrig_loadgen::run(
        &options,
        &Plan::new(vec![ScenarioSpec::Load(load)]),
        &Stop::default(),
    )
    .await
    .expect("pre-flight");
    let scenario = &report.scenarios[0];
    let mut out = String::new();
    vecrig_loadgen::report::text::render_scenario(&mut out, scenario);
    print!("{out}");
    assert!(scenario.passed, "{:?}", scenario.thresholds);
    scenario.phases.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_sends_every_arrival_or_counts_it_dropped() {
    let (mut config, temp) = TestServer::config(32);
    config.preload = 2000;
    let server = TestServer::start_in(config, temp).await;

    // A constant 200/s for 3 s: 600 arrivals, all sent and answered.
    let phases = run(
        &server,
        Load {
            model: LoadModel::Open,
            start: 200.0,
            stages: vec![Stage {
                duration: Duration::from_secs(3),
                target: 200.0,
            }],
            max_in_flight: 1000,
            think: Duration::ZERO,
        },
    )
    .await;
    let p = &phases[0];
    assert!(
        (590..=610).contains(&p.requests),
        "{} requests for 600 arrivals",
        p.requests
    );
    assert_eq!(p.dropped, 0);
    assert_eq!(p.successes, p.requests);

    // At most one outstanding at 3000/s: most arrivals cannot be sent on time; every one of
    // them is either a request or a drop.
    let phases = run(
        &server,
        Load {
            model: LoadModel::Open,
            start: 3000.0,
            stages: vec![Stage {
                duration: Duration::from_secs(2),
                target: 3000.0,
            }],
            max_in_flight: 1,
            think: Duration::ZERO,
        },
    )
    .await;
    let p = &phases[0];
    assert!(p.dropped > 0, "one slot cannot carry 3000/s");
    let arrivals = p.requests + p.dropped;
    assert!(
        (5900..=6100).contains(&arrivals),
        "{arrivals} arrivals accounted for 6000"
    );

    // A ramp from 0 to 400/s over 2 s: about 400 arrivals in all.
    let phases = run(
        &server,
        Load {
            model: LoadModel::Open,
            start: 0.0,
            stages: vec![Stage {
                duration: Duration::from_secs(2),
                target: 400.0,
            }],
            max_in_flight: 1000,
            think: Duration::ZERO,
        },
    )
    .await;
    let p = &phases[0];
    assert!(
        (340..=460).contains(&p.requests),
        "{} requests on a 0->400/s ramp",
        p.requests
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramping_users_follow_their_stages() {
    let (mut config, temp) = TestServer::config(32);
    config.preload = 2000;
    let server = TestServer::start_in(config, temp).await;
    let phases = run(
        &server,
        Load {
            model: LoadModel::Closed,
            start: 0.0,
            stages: vec![
                Stage {
                    duration: Duration::from_secs(1),
                    target: 20.0,
                },
                Stage {
                    duration: Duration::from_secs(1),
                    target: 20.0,
                },
                Stage {
                    duration: Duration::from_secs(1),
                    target: 0.0,
                },
            ],
            max_in_flight: 1000,
            think: Duration::from_millis(10),
        },
    )
    .await;
    assert_eq!(phases.len(), 3);
    assert_eq!(phases[1].concurrency, 20);
    // 20 users with a 10 ms think time send far more in the flat stage than in the ramps.
    assert!(phases[1].requests > phases[0].requests, "{phases:?}");
    assert!(phases[1].requests > phases[2].requests, "{phases:?}");
    assert!(phases.iter().all(|p| p.successes == p.requests));
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_fail_stops_the_whole_run_at_the_first_failed_threshold() {
    let (mut config, temp) = TestServer::config(32);
    config.preload = 500;
    let server = TestServer::start_in(config, temp).await;

    let mut options = RunOptions::new(server.target());
    options.timeout = Duration::from_secs(10);
    options.abort_on_fail = Some(Duration::from_secs(1));
    let steady = |seconds| Load {
        model: LoadModel::Open,
        start: 100.0,
        stages: vec![Stage {
            duration: Duration::from_secs(seconds),
            target: 100.0,
        }],
        max_in_flight: 100,
        think: Duration::ZERO,
    };
    // No real server answers within a microsecond: the threshold fails as soon as it is
    // judged, one second into a 30 s phase, and the second scenario never starts.
    let mut plan = Plan::new(vec![
        ScenarioSpec::Load(steady(30)),
        ScenarioSpec::Load(steady(30)),
    ]);
    plan.thresholds = vec!["p99<0.001ms@*".parse().expect("threshold")];
    let report = vecrig_loadgen::run(&options, &plan, &Stop::default())
        .await
        .expect("pre-flight");

    let reason = report.aborted.as_deref().expect("the run was aborted");
    assert!(reason.contains("p99<0.001ms"), "{reason}");
    assert!(!report.passed);
    assert!(!report.interrupted, "an abort is not a Ctrl-C");
    assert_eq!(report.scenarios.len(), 1, "the second scenario ran");
    let scenario = &report.scenarios[0];
    assert!(!scenario.passed);
    assert!(
        scenario
            .thresholds
            .iter()
            .any(|t| !t.passed && t.scope.contains("aborted")),
        "{:?}",
        scenario.thresholds
    );
    // Stopped well before the phase's 30 s (judged from 1 s on, once a second).
    assert!(
        scenario.phases[0].duration_s < 15.0,
        "phase ran {} s",
        scenario.phases[0].duration_s
    );
    assert!(scenario.phases[0].requests > 0);
}
