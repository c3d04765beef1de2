//! `Stats` high-water marks: a burst that has come and gone before `Stats` is asked still
//! shows in `peak_in_flight` (and in the loadgen's server line), and each call starts the
//! next period afresh.

use std::time::Duration;

use crate::common::TestServer;
use vecrig::proto::{SearchRequest, StatsRequest, Vector, search_request};
use vecrig_loadgen::plan::scenario::Stage;
use vecrig_loadgen::plan::suite::{Load, LoadModel};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_between_two_stats_calls_shows_in_the_peaks() {
    let (mut config, temp) = TestServer::config(16);
    config.preload = 500;
    let server = TestServer::start_in(config, temp).await;
    let client = server.client().await;
    let mut stats = client.clone();
    // The period before the burst.
    stats.stats(StatsRequest {}).await.expect("stats");
    let burst: Vec<_> = (0..64)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let query = SearchRequest {
                    query: Some(search_request::Query::Vector(Vector {
                        values: vec![i as f32 / 64.0; 16],
                    })),
                    k: 10,
                    exact: true,
                    ..Default::default()
                };
                client.search(query).await.map(drop)
            })
        })
        .collect();
    for request in burst {
        request.await.expect("join").expect("search");
    }
    let after = stats
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!((after.in_flight, after.queued), (0, 0), "the burst is over");
    assert!(after.peak_in_flight >= 1, "{after:?}");
    let next = stats
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!((next.peak_in_flight, next.peak_queued), (0, 0), "{next:?}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_second_scenario_reports_its_server_peaks() {
    let (mut config, temp) = TestServer::config(16);
    config.preload = 500;
    let server = TestServer::start_in(config, temp).await;
    let load = Load {
        model: LoadModel::Closed,
        start: 64.0,
        stages: vec![Stage {
            duration: Duration::from_millis(400),
            target: 64.0,
        }],
        max_in_flight: 100,
        think: Duration::ZERO,
    };
    let report = vecrig_loadgen::run(
        &RunOptions::new(server.target()),
        &Plan::new(vec![ScenarioSpec::Load(load)]),
        &Stop::default(),
    )
    .await
    .expect("pre-flight");
    let server_figures = &report.scenarios[0].server;
    assert!(server_figures.max_in_flight >= 1, "{server_figures:?}");
    server.stop().await.expect("clean stop");
}
