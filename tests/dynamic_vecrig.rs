//! The five scenarios (quick profile) against vecrig-server twice, each with its own workload
//! (the specification's texts, large texts, vectors): natively (the built-in `vecrig.v1`
//! template set over the descriptors compiled into the loadgen) and as a templated target
//! named by a scenario file (the same set over descriptors read by reflection). Same seed, so
//! the same requests: the verdicts must be the same, scenario by scenario and threshold by
//! threshold, and the scenarios whose size is a count of requests must send the same count. The server is the real
//! binary in a process of its own, so the test process's CPU is the loadgen's: its CPU per
//! request is printed for both (measured, not asserted: a timing on a shared machine).
//! vecrig-server serves `grpc.reflection.v1` (the Python store of `dynamic_target.rs` only
//! `v1alpha`, so the two tests cover both).

use std::time::Duration;

use vecrig::client::ConnectOptions;
use vecrig::validation::report::Report;
use vecrig_loadgen::plan::file::Planned;
use vecrig_loadgen::plan::suite::Profile;
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::target::LocalServer;
use vecrig_loadgen::{Plan, RunOptions, ScenarioSpec};

const DIMENSIONS: usize = 128;

fn options(target: String) -> RunOptions {
    let mut options = RunOptions::new(target);
    options.connect = ConnectOptions {
        connections: 8,
        ..ConnectOptions::default()
    };
    options
}

fn print(label: &str, report: &Report) {
    let mut out = String::new();
    for scenario in &report.scenarios {
        vecrig_loadgen::report::text::render_scenario(&mut out, scenario);
    }
    println!("---- {label}\n{out}");
}

/// The loadgen's CPU seconds per request, over the whole run.
fn cpu_per_request(report: &Report) -> f64 {
    let requests: u64 = report.scenarios.iter().map(|s| s.total.requests).sum();
    report.loadgen.cpu_seconds / requests.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_suite_through_reflection_and_templates_gives_the_native_verdicts() {
    let fixture = crate::common::preloaded_fixture(DIMENSIONS, 10_000).await;
    let data = tempfile::tempdir().expect("tempdir");
    crate::common::copy_dir(&fixture, data.path());
    let server = LocalServer::spawn(
        &crate::common::process::server_binary(),
        0,
        Some(data.path()),
        None,
        &["--dimensions".into(), DIMENSIONS.to_string()],
    )
    .await
    .expect("vecrig-server starts");
    let plan = Plan::new(ScenarioSpec::suite(Profile::Quick));
    let native = vecrig_loadgen::run(&options(server.target.clone()), &plan, &Stop::default())
        .await
        .expect("native pre-flight");
    print("native", &native);

    let file = format!(
        "[target]\nbuiltin = \"vecrig.v1\"\ndimensions = {DIMENSIONS}\n{}",
        [
            "extreme-concurrency",
            "memory-pressure",
            "sustained",
            "resource-exhaustion",
            "scale",
        ]
        .iter()
        .map(|name| format!("[[scenario]]\nname = \"{name}\"\n"))
        .collect::<String>()
    );
    let planned = Planned::parse(&file, Profile::Quick).expect("the file parses");
    let templated = vecrig_loadgen::run_file(
        &options(server.target.clone()),
        &planned,
        &Plan::new(Vec::new()),
        &Stop::default(),
    )
    .await
    .expect("templated pre-flight");
    print("templated", &templated);

    println!(
        "loadgen CPU per request: native {:.1} us, templated {:.1} us",
        cpu_per_request(&native) * 1e6,
        cpu_per_request(&templated) * 1e6
    );
    assert_eq!(native.scenarios.len(), 5);
    assert_eq!(templated.scenarios.len(), 5);
    for (n, t) in native.scenarios.iter().zip(&templated.scenarios) {
        assert_eq!(n.name, t.name);
        let verdicts = |s: &vecrig::validation::report::ScenarioReport| {
            s.thresholds
                .iter()
                // The recovery check names its bound, a figure of the run: compared without it.
                .map(|j| {
                    let expression = j.expression.split(" (=").next().unwrap_or_default();
                    (j.scope.clone(), expression.to_string(), j.passed)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(verdicts(n), verdicts(t), "{}", n.name);
        assert_eq!(n.passed, t.passed, "{}", n.name);
        assert_eq!(
            n.phases.iter().map(|p| &p.name).collect::<Vec<_>>(),
            t.phases.iter().map(|p| &p.name).collect::<Vec<_>>()
        );
        // Server figures are sampled for both: vecrig-server answers Stats either way.
        assert!(n.server.samples > 0 && t.server.samples > 0, "{}", t.name);
    }
    // Scenarios sized by a count of requests send that count either way.
    for name in ["extreme-concurrency", "resource-exhaustion"] {
        let find = |r: &Report| {
            r.scenarios
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.total.requests)
        };
        assert_eq!(find(&native), find(&templated), "{name}");
    }
    server.stop(Duration::from_secs(30)).await;
}
