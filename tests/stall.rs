//! Coordinated omission, caught: a server frozen for one second (SIGSTOP, then SIGCONT) during
//! a constant-rate run must show in the latency percentiles, measured from each request's
//! intended send time, while the service time (from the actual send) does not hide nor invent
//! it, and no request may disappear from the counts.
//!
//! The load is the paced model (as wrk2): each worker sends on a fixed schedule, so while the
//! server is frozen the workers' next sends fall behind schedule, and a naive load tool that
//! timed from the actual send would report that second as fast requests.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vecrig::client::ConnectOptions;
use vecrig_loadgen::plan::scenario::{Model, Phase, Scenario};
use vecrig_loadgen::plan::workload::{Workload, WorkloadKind};
use vecrig_loadgen::scheduler::Stop;
use vecrig_loadgen::{RunOptions, run_with};

const RATE: f64 = 300.0;
const SECONDS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_latency_from_intended_send_time() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut command = crate::common::process::server_command();
    command
        .args(["--dimensions", "32", "--preload", "2000"])
        .arg("--data-dir")
        .arg(data.path());
    let (mut server, addr) = crate::common::process::spawn(command).await;
    let target = format!("http://{addr}");
    let pid = Pid::from_raw(server.id().expect("pid") as i32);

    let mut options = RunOptions::new(target);
    options.connect = ConnectOptions {
        connections: 2,
        ..ConnectOptions::default()
    };
    options.timeout = Duration::from_secs(10);
    let workload = Workload::new(WorkloadKind::Vector, 32, 42, 10);
    let scenario = Scenario {
        name: "stall".into(),
        description: format!("{RATE} req/s on schedule; the server is frozen for 1 s"),
        parameters: Default::default(),
        phases: vec![Phase {
            name: "paced".into(),
            model: Model::Paced {
                workers: 10,
                rate: RATE,
                duration: Duration::from_secs(SECONDS),
            },
        }],
        workload,
        thresholds: Vec::new(),
        monitor_every: None,
        check_recovery: false,
        timeout: None,
        identities: Vec::new(),
    };
    let freezer = tokio::spawn(async move {
        // Pre-flight waits for SERVING first; freeze well inside the run.
        tokio::time::sleep(Duration::from_secs(3)).await;
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        tokio::time::sleep(Duration::from_secs(1)).await;
        kill(pid, Signal::SIGCONT).expect("SIGCONT");
    });
    let report = run_with(&options, 42, &Stop::default(), |_| vec![scenario])
        .await
        .expect("pre-flight");
    freezer.await.expect("freezer");
    let phase = &report.scenarios[0].phases[0];
    let mut out = String::new();
    vecrig_loadgen::report::text::render_scenario(&mut out, &report.scenarios[0]);
    print!("{out}");
    println!(
        "service time: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        phase.service_time.p50_ms, phase.service_time.p99_ms, phase.service_time.max_ms
    );

    // Every scheduled request was sent and counted: none silently skipped.
    let scheduled = (RATE * SECONDS as f64) as u64;
    assert!(
        phase.requests + 10 >= scheduled && phase.requests <= scheduled + 10,
        "{} requests counted, {scheduled} scheduled",
        phase.requests
    );
    assert_eq!(phase.successes, phase.requests, "{:?}", phase.codes);
    // The stall is in the latency from the intended send time: about a second at the top.
    assert!(
        phase.latency.max_ms >= 800.0,
        "max latency {} ms should show the 1 s stall",
        phase.latency.max_ms
    );
    assert!(
        phase.latency.p99_ms >= 500.0,
        "p99 {} ms should show the stall (a sixth of the run was scheduled inside it)",
        phase.latency.p99_ms
    );
    // Service time, from the actual send, sees only the few requests caught in flight.
    assert!(
        phase.service_time.p99_ms < phase.latency.p99_ms / 4.0,
        "service-time p99 {} ms vs latency p99 {} ms",
        phase.service_time.p99_ms,
        phase.latency.p99_ms
    );
    server.kill().await.expect("kill");
}
