//! The loadgen's own cost per request, side by side with h2load in one run.
//!
//! A load generator that burns more CPU per request than the server it measures ends up
//! measuring itself. This bench starts a `vecrig-server` with a tiny index (1000 points of 32
//! dimensions) so that a k=1 search is about the cheapest RPC there is, then alternates rounds
//! of:
//! - `h2load` (Debian's nghttp2-client) POSTing one serialized gRPC `Search` request over and
//!   over on 4 connections with 32 streams each, and
//! - `vecrig-loadgen` running a closed model of 128 users on 4 connections sending the very same
//!   request (`--workload fixed`, whose one query is the frame h2load sends), on one thread as
//!   h2load's `-t 1`, and again with its default threads (one per CPU), recall sampling off
//!   (h2load checks no answers),
//! - the loadgen on one thread again with a new query every request (`--workload vector`, its
//!   usual load): a varied query costs the server more than one asked again and again (it
//!   walks other parts of the index, in colder caches), so the rate is lower and each wake-up
//!   of the client gathers fewer answers; this row shows what that costs the client,
//! - and h2load again with 2 threads, for the highest rate it reaches,
//! - `vecrig-loadgen` on one thread again, the same load sent to the server as a templated
//!   target named by a scenario file (descriptors by reflection, what a service whose proto
//!   we did not design gets; every request is rendered from a template set either way, the
//!   built-in `vecrig.v1` one over compiled-in descriptors otherwise), so the two are priced
//!   side by side,
//! - and that templated load again with the query vector also written, as little-endian f32
//!   bytes, inside a message of its own encoded into a `bytes` field (Milvus's
//!   `placeholder_group`), through a `.proto` of vecrig's `Search` with that field added (the
//!   server skips it as an unknown field): what building a nested message per request costs,
//!
//! and takes each one's CPU time (user + system, from `getrusage(RUSAGE_CHILDREN)` around the
//! child's whole life, start-up included) per 1000 requests answered. The figures of merit,
//! all from the same run: loadgen / h2load at one thread each on the same request (goal <= 1),
//! the loadgen's default threads / one thread (goal <= 1.1: more threads must not cost more
//! per request), the loadgen's highest rate / h2load's on the same request (goal >= 1), and
//! templated / native requests at one thread, both with varied queries (goal <= 1: a
//! templated target costs no more per request), and nested / templated (goal <= 1.2).
//!
//! Run: `cargo bench -p vecrig-loadgen --bench cost_per_request` (release; needs `h2load` and
//! `nghttp` on PATH: `apt-get install nghttp2-client`; without them only the loadgen's own
//! figure is printed). `VECRIG_BENCH_ROUNDS` (default 3) and `VECRIG_BENCH_SECONDS` (default 8)
//! size it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use prost::Message;
use vecrig::proto::{SearchRequest, Vector, search_request};
use vecrig::synthetic::Synthetic;
use vecrig_loadgen::target::LocalServer;

const DIMENSIONS: usize = 32;
const POINTS: u64 = 1000;
const CONNECTIONS: u32 = 4;
const STREAMS_PER_CONNECTION: u32 = 32;
const SEARCH_PATH: &str = "/vecrig.v1.VectorIndex/Search";

/// One child process's cost: CPU seconds, requests answered, wall seconds.
#[derive(Clone, Copy, Default)]
struct Cost {
    cpu_s: f64,
    /// The user-space part of `cpu_s` (the rest is the kernel's: syscalls, TCP).
    user_s: f64,
    requests: u64,
    wall_s: f64,
}

impl Cost {
    fn cpu_per_1000(self) -> f64 {
        if self.requests == 0 {
            f64::NAN
        } else {
            self.cpu_s * 1000.0 / self.requests as f64
        }
    }

    /// Requests per second of wall time.
    fn rate(self) -> f64 {
        self.requests as f64 / self.wall_s.max(1e-9)
    }

    fn add(&mut self, other: Cost) {
        self.cpu_s += other.cpu_s;
        self.user_s += other.user_s;
        self.requests += other.requests;
        self.wall_s += other.wall_s;
    }
}

/// CPU seconds (user, system) of every child reaped so far.
fn children_cpu_seconds() -> (f64, f64) {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    (seconds(usage.user_time()), seconds(usage.system_time()))
}

/// Runs `command` to completion and returns its CPU time (total, user), wall time and output.
fn run_measured(command: &mut Command) -> ((f64, f64), f64, String) {
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run child");
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = children_cpu_seconds();
    let user = cpu_after.0 - cpu_before.0;
    let cpu = (user + cpu_after.1 - cpu_before.1, user);
    assert!(
        output.status.success(),
        "{command:?} failed with {}",
        output.status
    );
    (
        cpu,
        wall,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The k=1 search h2load sends, the one the loadgen's `fixed` workload sends on the same
/// seed: a gRPC length-prefixed frame around a serialized request.
fn grpc_search_frame() -> Vec<u8> {
    let query = vecrig_loadgen::plan::workload::fixed_query(DIMENSIONS, Synthetic::DEFAULT_SEED);
    let request = SearchRequest {
        query: Some(search_request::Query::Vector(Vector { values: query })),
        k: 1,
        ..SearchRequest::default()
    };
    let body = request.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0); // not compressed
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Checks once with `nghttp -v` that the frame h2load will send is answered with
/// `grpc-status: 0`: h2load itself counts any HTTP 200 as a success, and gRPC errors are 200s.
fn check_frame_is_answered_ok(target: &str, frame_file: &Path) {
    let output = Command::new("nghttp")
        .args(["-v", "-H", ":method: POST"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(frame_file)
        .arg(format!("{target}{SEARCH_PATH}"))
        .output()
        .expect("run nghttp");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("grpc-status: 0"),
        "the h2load request is not answered OK by the server:\n{text}"
    );
}

fn h2load_round(target: &str, frame_file: &Path, requests: u64, threads: u32) -> Cost {
    let ((cpu_s, user_s), wall_s, stdout) = run_measured(
        Command::new("h2load")
            .args(["-n", &requests.to_string()])
            .args(["-c", &CONNECTIONS.to_string()])
            .args(["-m", &STREAMS_PER_CONNECTION.to_string()])
            .args(["-t", &threads.to_string()])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            // The same deadline the loadgen sends, so the server does the same work for both
            // (a request with grpc-timeout has its deadline checked and timed by the server).
            .args(["-H", "grpc-timeout: 30000000u"])
            .arg("-d")
            .arg(frame_file)
            .arg(format!("{target}{SEARCH_PATH}")),
    );
    // "requests: 200000 total, 200000 started, 200000 done, 200000 succeeded, 0 failed, ..."
    let succeeded = stdout
        .lines()
        .find(|line| line.starts_with("requests:"))
        .and_then(|line| {
            line.split(',')
                .find(|part| part.trim_end().ends_with("succeeded"))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no request count in h2load's output:\n{stdout}"));
    Cost {
        cpu_s,
        user_s,
        requests: succeeded,
        wall_s,
    }
}

/// A loadgen run on `threads` threads (0: its default, one per CPU): the flags every round
/// shares, then `load` (what to send), measured as one child process.
fn measured_loadgen(
    loadgen: &Path,
    target: &str,
    threads: u32,
    report: &Path,
    load: &[String],
) -> Cost {
    let ((cpu_s, user_s), wall_s, _) = run_measured(
        Command::new(loadgen)
            .args(["--target", target])
            .args(["--connections", &CONNECTIONS.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--k", "1", "--max-attempts", "1"])
            // No recall sampling (on by default): its searches go over tonic rather than the
            // path measured here, and checking them takes the exact answers at 250 a second
            // after the phase, two seconds of wall time (a fifth of a round) in which no load
            // is sent; h2load checks no answers either.
            .args(["--recall-sample", "0"])
            .arg("--out")
            .arg(report)
            .args(load),
    );
    Cost {
        cpu_s,
        user_s,
        requests: successes_in(report),
        wall_s,
    }
}

/// A native run (searches of `workload`, closed model) on `threads` threads.
fn loadgen_round(
    loadgen: &Path,
    target: &str,
    (seconds, workload): (u64, &str),
    report: &Path,
    threads: u32,
) -> Cost {
    let users = (CONNECTIONS * STREAMS_PER_CONNECTION).to_string();
    let load = [
        "--workload",
        workload,
        "load",
        "--model",
        "closed",
        "--stages",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("{seconds}s:{users}"), "--start".into(), users])
    .collect::<Vec<_>>();
    measured_loadgen(loadgen, target, threads, report, &load)
}

/// A scenario file that sends the same load as [`loadgen_round`] to the server as a templated
/// target: its descriptors from reflection, its requests from the built-in `vecrig.v1` set.
fn templated_scenario_file(seconds: u64) -> String {
    let users = CONNECTIONS * STREAMS_PER_CONNECTION;
    format!(
        "[target]\nbuiltin = \"vecrig.v1\"\ndimensions = {DIMENSIONS}\n\n\
         [[scenario]]\nname = \"templated\"\nmodel = \"closed\"\n\
         start = {users}\nstages = \"{seconds}s:{users}\"\n"
    )
}

/// vecrig's `Search` with a `bytes` field (100) holding a message that carries the query
/// vector as bytes, as Milvus's `placeholder_group` does.
const NESTED_PROTO: &str = r#"
syntax = "proto3";
package vecrig.v1;
service VectorIndex { rpc Search(SearchRequest) returns (SearchResponse); }
message Vector { repeated float values = 1; }
message SearchRequest {
  oneof query { Vector vector = 1; string text = 2; }
  uint32 k = 3;
  bytes placeholder_group = 100;
}
message PlaceholderValue { string tag = 1; int32 type = 2; repeated bytes values = 3; }
message PlaceholderGroup { repeated PlaceholderValue placeholders = 1; }
message Hit { uint64 id = 1; float score = 2; }
message SearchResponse { repeated Hit hits = 1; }
"#;

/// The templated load of [`templated_scenario_file`] with the nested message of
/// [`NESTED_PROTO`] in every request.
fn nested_scenario_file(seconds: u64) -> String {
    let users = CONNECTIONS * STREAMS_PER_CONNECTION;
    format!(
        "[target]
protos = [\"nested.proto\"]
dimensions = {DIMENSIONS}
         [target.search]
method = \"vecrig.v1.VectorIndex/Search\"
ids = \"hits[].id\"
         request = '{{\"vector\": {{\"values\": \"{{{{vector}}}}\"}}, \"k\": \"{{{{k}}}}\",          \"placeholder_group\": {{\"@encode\": \"vecrig.v1.PlaceholderGroup\", \"placeholders\":          [{{\"tag\": \"$0\", \"type\": 101, \"values\": [\"{{{{vector}}}}\"]}}]}}}}'

         [[scenario]]
name = \"nested\"
model = \"closed\"
         start = {users}
stages = \"{seconds}s:{users}\"
"
    )
}

/// A run on one thread against the server as a templated target (`file`, from
/// [`templated_scenario_file`]).
fn loadgen_templated_round(loadgen: &Path, target: &str, file: &Path, report: &Path) -> Cost {
    let load = ["run".to_string(), file.display().to_string()];
    measured_loadgen(loadgen, target, 1, report, &load)
}

/// Requests answered OK, over every phase of the report at `report`.
fn successes_in(report: &Path) -> u64 {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).expect("read report")).expect("json");
    json["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["phases"].as_array().into_iter().flatten())
        .map(|p| p["successes"].as_u64().unwrap_or(0))
        .sum()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let rounds = env_u64("VECRIG_BENCH_ROUNDS", 3);
    let seconds = env_u64("VECRIG_BENCH_SECONDS", 8);
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_vecrig-loadgen"));
    let server_binary = common::server_binary(&loadgen);
    let work = tempfile::tempdir().expect("tempdir");
    let frame_file = work.path().join("search.grpc");
    std::fs::write(&frame_file, grpc_search_frame()).expect("write frame");
    let report = work.path().join("report.json");
    let templated_file = work.path().join("templated.toml");
    std::fs::write(&templated_file, templated_scenario_file(seconds)).expect("write scenario");
    let nested_file = work.path().join("nested.toml");
    std::fs::write(&nested_file, nested_scenario_file(seconds)).expect("write scenario");
    std::fs::write(work.path().join("nested.proto"), NESTED_PROTO).expect("write proto");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime
        .block_on(LocalServer::spawn(
            &server_binary,
            POINTS,
            None,
            None,
            &[
                "--dimensions".into(),
                DIMENSIONS.to_string(),
                "--log".into(),
                "warn".into(),
            ],
        ))
        .expect("start vecrig-server");
    let target = server.target.clone();
    // Warm-up, not counted: the loadgen's pre-flight also waits until the server has loaded
    // its index and says SERVING.
    loadgen_round(&loadgen, &target, (2, "vector"), &report, 0);
    let with_h2load = on_path("h2load") && on_path("nghttp");
    if with_h2load {
        check_frame_is_answered_ok(&target, &frame_file);
    } else {
        println!("h2load/nghttp not found (apt-get install nghttp2-client): loadgen figure only");
    }

    println!(
        "server {target}: {POINTS} points x {DIMENSIONS} dims, k=1 vector search; \
         {CONNECTIONS} connections x {STREAMS_PER_CONNECTION} streams (h2load) / {} users (loadgen)",
        CONNECTIONS * STREAMS_PER_CONNECTION
    );
    println!(
        "{:>5}  {:>13}  {:>10}  {:>8}  {:>8}  {:>6}  {:>10}",
        "round", "tool", "requests", "req/s", "cpu s", "user", "cpu s/1000"
    );
    // Totals: loadgen on one thread, on its default threads (the fixed request), with varied
    // queries and templated on one thread; h2load on one, on two.
    let (mut ours, mut ours_all) = (Cost::default(), Cost::default());
    let (mut ours_varied, mut ours_templated) = (Cost::default(), Cost::default());
    let mut ours_nested = Cost::default();
    let (mut theirs, mut theirs_two) = (Cost::default(), Cost::default());
    let (mut our_best_rate, mut their_best_rate) = (0.0f64, 0.0f64);
    // The machine's load drifts (other work shares its cores), so the order alternates:
    // odd rounds run the loadgen first, even rounds h2load first.
    let mut requests = 0;
    for round in 1..=rounds {
        let loadgen_first = round % 2 == 1 || !with_h2load;
        let mut h2load_runs = |round: u64, requests: u64| {
            if !with_h2load {
                return;
            }
            // As many requests as the loadgen answered, so both run about as long.
            let one = h2load_round(&target, &frame_file, requests.max(1000), 1);
            print_row(round, "h2load -t1", one);
            theirs.add(one);
            let two = h2load_round(&target, &frame_file, requests.max(1000), 2);
            print_row(round, "h2load -t2", two);
            theirs_two.add(two);
            their_best_rate = their_best_rate.max(one.rate()).max(two.rate());
        };
        if !loadgen_first {
            h2load_runs(round, requests);
        }
        let one = loadgen_round(&loadgen, &target, (seconds, "fixed"), &report, 1);
        print_row(round, "loadgen -t1", one);
        ours.add(one);
        let all = loadgen_round(&loadgen, &target, (seconds, "fixed"), &report, 0);
        print_row(round, "loadgen", all);
        ours_all.add(all);
        let varied = loadgen_round(&loadgen, &target, (seconds, "vector"), &report, 1);
        print_row(round, "varied -t1", varied);
        ours_varied.add(varied);
        let templated = loadgen_templated_round(&loadgen, &target, &templated_file, &report);
        print_row(round, "templated -t1", templated);
        ours_templated.add(templated);
        let nested = loadgen_templated_round(&loadgen, &target, &nested_file, &report);
        print_row(round, "nested -t1", nested);
        ours_nested.add(nested);
        our_best_rate = our_best_rate.max(one.rate()).max(all.rate());
        requests = one.requests;
        if loadgen_first {
            h2load_runs(round, requests);
        }
    }
    println!();
    let summary = |name: &str, cost: Cost| {
        println!(
            "{name:<22} {:.4} CPU s per 1000 requests ({:.0}% user; {} requests, {:.0} req/s)",
            cost.cpu_per_1000(),
            100.0 * cost.user_s / cost.cpu_s.max(1e-9),
            cost.requests,
            cost.rate()
        );
    };
    summary("vecrig-loadgen -t1:", ours);
    summary("vecrig-loadgen:", ours_all);
    println!(
        "ratio loadgen default threads / one thread: {:.2} (goal <= 1.1)",
        ours_all.cpu_per_1000() / ours.cpu_per_1000()
    );
    summary("loadgen varied -t1:", ours_varied);
    summary("loadgen templated -t1:", ours_templated);
    println!(
        "ratio templated / native requests, varied queries, one thread each: {:.2} (goal <= 1)",
        ours_templated.cpu_per_1000() / ours_varied.cpu_per_1000()
    );
    summary("loadgen nested -t1:", ours_nested);
    println!(
        "ratio nested bytes message / templated, one thread each: {:.2} (goal <= 1.2)",
        ours_nested.cpu_per_1000() / ours_templated.cpu_per_1000()
    );
    if with_h2load {
        summary("h2load -t1:", theirs);
        summary("h2load -t2:", theirs_two);
        println!(
            "ratio loadgen / h2load, one thread each, the same request: {:.2} (goal <= 1)",
            ours.cpu_per_1000() / theirs.cpu_per_1000()
        );
        println!(
            "ratio loadgen with varied queries / h2load, one thread each: {:.2}",
            ours_varied.cpu_per_1000() / theirs.cpu_per_1000()
        );
        println!(
            "highest rate, the same request: loadgen {our_best_rate:.0} req/s, h2load {their_best_rate:.0} req/s, ratio {:.2} (goal >= 1)",
            our_best_rate / their_best_rate
        );
    }
    runtime.block_on(server.stop(Duration::from_secs(10)));
}

fn print_row(round: u64, tool: &str, cost: Cost) {
    println!(
        "{round:>5}  {tool:>13}  {:>10}  {:>8.0}  {:>8.3}  {:>5.0}%  {:>10.4}",
        cost.requests,
        cost.requests as f64 / cost.wall_s,
        cost.cpu_s,
        100.0 * cost.user_s / cost.cpu_s.max(1e-9),
        cost.cpu_per_1000()
    );
}
