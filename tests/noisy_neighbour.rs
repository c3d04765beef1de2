//! `noisy-neighbour` against a real server: the flood and the polite client are each
//! reported apart, and each is a client of its own to the server: the polite client's
//! connections come from its own source address, its requests carry its own token.
//! (The server is FIFO today; whether the polite client is served fairly is for the
//! fairness tests.)

use std::time::Duration;

use crate::common::TestServer;
use vecrig::validation::report::ScenarioReport;
use vecrig_loadgen::plan::noisy_neighbour::NoisyNeighbour;
use vecrig_loadgen::plan::scenario::Identity;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

fn neighbours(flood: Identity, polite: Identity) -> Plan {
    Plan::new(vec![ScenarioSpec::NoisyNeighbour(NoisyNeighbour {
        flood_users: 16,
        polite_rate: 20.0,
        polite_workers: 2,
        duration: Duration::from_secs(2),
        flood,
        polite,
    })])
}

fn show(scenario: &ScenarioReport) {
    let mut out = String::new();
    vecrig_loadgen::report::text::render_scenario(&mut out, scenario);
    print!("{out}");
}

/// The local addresses of the established TCP connections to `port` (from /proc/net/tcp).
fn sources_to(port: u16) -> Vec<std::net::Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let (_, remote_port) = remote.split_once(':')?;
            if *state != "01" || u16::from_str_radix(remote_port, 16).ok()? != port {
                return None;
            }
            let (ip, _) = local.split_once(':')?;
            // The kernel prints the address in host (little-endian) order.
            Some(std::net::Ipv4Addr::from(
                u32::from_str_radix(ip, 16).ok()?.swap_bytes(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_is_reported_apart_and_the_polite_one_connects_from_its_own_address() {
    let (mut config, temp) = TestServer::config(16);
    config.preload = 300;
    let server = TestServer::start_in(config, temp).await;
    let flood = Identity {
        bind: Some("127.0.0.1".parse().expect("ip")),
        token: None,
    };
    let polite = Identity {
        bind: Some("127.0.0.2".parse().expect("ip")),
        token: None,
    };
    let options = RunOptions::new(server.target());
    let run = tokio::spawn(async move {
        vecrig_loadgen::run(&options, &neighbours(flood, polite), &Stop::default()).await
    });
    let mut seen = std::collections::BTreeSet::new();
    while !run.is_finished() {
        seen.extend(sources_to(server.addr.port()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = run.await.expect("join").expect("pre-flight");
    let scenario = &report.scenarios[0];
    show(scenario);
    let names: Vec<&str> = scenario.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["flood", "polite"]);
    let (flood, polite) = (&scenario.phases[0], &scenario.phases[1]);
    assert!(flood.requests > 0 && polite.requests > 0);
    assert_eq!(flood.successes, flood.requests, "{:?}", flood.codes);
    assert_eq!(polite.successes, polite.requests, "{:?}", polite.codes);
    // 20 per second for 2 s, on schedule: the polite client's own count, not the flood's.
    assert!((30..=50).contains(&polite.requests), "{}", polite.requests);
    assert!(flood.requests > polite.requests);
    assert_eq!(scenario.total.requests, flood.requests + polite.requests);
    assert!(seen.contains(&"127.0.0.2".parse().expect("ip")), "{seen:?}");
    assert!(seen.contains(&"127.0.0.1".parse().expect("ip")), "{seen:?}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_polite_client_sends_its_own_token() {
    let (mut config, temp) = TestServer::config(16);
    config.preload = 300;
    config.auth_token = Some(vecrig_server::layers::auth::Token::new("flood").expect("token"));
    let server = TestServer::start_in(config, temp).await;
    let mut options = RunOptions::new(server.target());
    // Pre-flight and the flood go as the run's client; the polite client's token is one the
    // server does not know, so every one of its requests (and none of the flood's) is refused.
    options.headers =
        vec![vecrig_loadgen::cli::parse_header("authorization: Bearer flood").expect("header")];
    let polite = Identity {
        bind: None,
        token: Some("polite".into()),
    };
    let report = vecrig_loadgen::run(
        &options,
        &neighbours(Identity::default(), polite),
        &Stop::default(),
    )
    .await
    .expect("pre-flight");
    let scenario = &report.scenarios[0];
    show(scenario);
    let (flood, polite) = (&scenario.phases[0], &scenario.phases[1]);
    assert!(flood.requests > 0);
    assert_eq!(flood.successes, flood.requests, "{:?}", flood.codes);
    assert!(polite.requests > 0);
    assert_eq!(
        polite.code("UNAUTHENTICATED"),
        polite.requests,
        "{:?}",
        polite.codes
    );
    server.stop().await.expect("clean stop");
}
