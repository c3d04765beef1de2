//! The loadgen against a server that misbehaves (issue 47): whatever the target does wrong, a
//! run ends by itself within its deadline of its scheduled end, never panics, and gives each
//! request exactly one outcome with a code that says what happened (UNAVAILABLE: the server
//! is gone or never took the request; INTERNAL: it broke HTTP/2 or gRPC; DEADLINE_EXCEEDED:
//! it never answered).
//!
//! The server is our own, over raw TCP (frames from `vecrig_loadgen::wire::frame`), so that it
//! can do what no HTTP/2 library lets a server do. The load is the engine's paced model sent
//! by one sender of the loadgen's own HTTP/2 client, driven in-process through
//! `engine::run_scenario`; tonic's pool (which the run's off-path calls would use, and which
//! sends nothing here) points at a quiet HTTP/2 server of the `h2` crate.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vecrig::client::{ConnectOptions, Metadata, Pool};
use vecrig::validation::report::PhaseReport;
use vecrig_loadgen::dynamic::Templates;
use vecrig_loadgen::measure::recall::Recall;
use vecrig_loadgen::plan::scenario::{Model, Phase, Scenario};
use vecrig_loadgen::plan::workload::{Workload, WorkloadKind};
use vecrig_loadgen::report::progress::Progress;
use vecrig_loadgen::scheduler::retry::{RetryBudget, RetryPolicy};
use vecrig_loadgen::scheduler::{Context, Senders, Stop, run_scenario};
use vecrig_loadgen::wire::Target;
use vecrig_loadgen::wire::frame::{self, Head, flag, kind, reason, setting};

/// The run every case sends: 4 paced workers, 40 requests a second for 1 s, each with a
/// 400 ms deadline; connections given 300 ms to be set up.
const RATE: f64 = 40.0;
const DURATION: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_millis(400);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Slack over the run's duration plus one deadline, for a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

/// What the server does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// Answers two requests on a connection, then sends GOAWAY saying it took none of the
    /// later ones, and closes the connection a little later.
    GoawayMidStreams,
    /// Resets each stream (INTERNAL_ERROR), and resets 200 of its earlier streams again.
    RstFlood,
    /// Gives every stream a send window of 0, then never reads again.
    StopsReading,
    /// Allows no stream at all (SETTINGS_MAX_CONCURRENT_STREAMS 0).
    ZeroStreams,
    /// Sends PINGs without end and reads nothing, not even their answers.
    PingFlood,
    /// Answers with a header block that never ends: CONTINUATION after CONTINUATION.
    HugeHeaders,
    /// Sends DATA for a stream the client never opened.
    DataForUnopenedStream,
    /// A message followed by bytes that are no whole message.
    BodyLongerThanPrefix,
    /// A compressed message in an encoding the client never offered.
    UnknownEncoding,
    /// Headers and a message, then END_STREAM without trailers.
    MissingTrailers,
    /// Trailers whose `grpc-status` is not a number.
    StatusNotNumber,
    /// Headers, then half a DATA frame, then the connection closed.
    ClosedMidFrame,
    /// Accepts the connection and never sends a byte.
    NeverSpeaks,
}

/// A server on 127.0.0.1 doing `misbehaviour` on every connection; returns its address.
async fn hostile_server(misbehaviour: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(connection(socket, misbehaviour));
        }
    });
    address
}

/// One connection of the hostile server. Errors (the client gone) end it quietly.
async fn connection(socket: TcpStream, misbehaviour: Misbehaviour) -> std::io::Result<()> {
    let (mut read, mut write) = socket.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    if misbehaviour == Misbehaviour::NeverSpeaks {
        while read.read_buf(&mut buf).await? > 0 {
            buf.clear();
        }
        return Ok(());
    }
    while buf.len() < frame::PREFACE.len() {
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
    let _ = buf.split_to(frame::PREFACE.len());
    let settings: &[(u16, u32)] = match misbehaviour {
        Misbehaviour::StopsReading => &[(setting::INITIAL_WINDOW_SIZE, 0)],
        Misbehaviour::ZeroStreams => &[(setting::MAX_CONCURRENT_STREAMS, 0)],
        _ => &[],
    };
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, settings);
    write.write_all(&out).await?;
    match misbehaviour {
        Misbehaviour::StopsReading => {
            // Holds the socket open, reading nothing, until the test's runtime ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok(());
        }
        Misbehaviour::PingFlood => {
            let mut pings = BytesMut::new();
            for i in 0..256u64 {
                frame::put_ping(&mut pings, false, i.to_be_bytes());
            }
            // Ends when the client closes the connection (the write fails).
            loop {
                write.write_all(&pings).await?;
            }
        }
        _ => {}
    }
    let mut answered = 0;
    loop {
        while let Some(head) = Head::parse(&buf) {
            if buf.len() < frame::HEAD_LEN + head.len {
                break;
            }
            let _ = buf.split_to(frame::HEAD_LEN + head.len);
            if head.kind != kind::HEADERS {
                continue; // the request's DATA, the client's SETTINGS, WINDOW_UPDATE, RST
            }
            answered += 1;
            let mut out = BytesMut::new();
            let close = misbehave(misbehaviour, head.stream, answered, &mut out);
            write.write_all(&out).await?;
            if close {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(());
            }
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// What the server sends for request number `n` of a connection, on `stream`; `true`: it then
/// closes the connection.
fn misbehave(misbehaviour: Misbehaviour, stream: u32, n: u32, out: &mut BytesMut) -> bool {
    let ok_message = [0, 0, 0, 0, 0];
    match misbehaviour {
        Misbehaviour::GoawayMidStreams if n <= 2 => {
            answer(out, stream, &[], &ok_message, Some("0"));
            false
        }
        Misbehaviour::GoawayMidStreams => {
            frame::put_goaway(out, stream - 2, reason::NO_ERROR);
            true
        }
        Misbehaviour::RstFlood => {
            frame::put_reset(out, stream, 0x2);
            for earlier in (1..stream).rev().skip(1).step_by(2).take(200) {
                frame::put_reset(out, earlier, 0x2);
            }
            false
        }
        Misbehaviour::HugeHeaders => {
            // A literal whose value never ends, 16 KiB a frame, 1.6 MB in all.
            let chunk = vec![b'a'; frame::DEFAULT_MAX_FRAME];
            put(out, kind::HEADERS, 0, stream, &chunk);
            for _ in 0..100 {
                put(out, kind::CONTINUATION, 0, stream, &chunk);
            }
            false
        }
        Misbehaviour::DataForUnopenedStream => {
            put(out, kind::DATA, 0, stream + 1000, &ok_message);
            false
        }
        Misbehaviour::BodyLongerThanPrefix => {
            let body = [0, 0, 0, 0, 2, 1, 2, 9, 9, 9, 9, 9, 9, 9, 9];
            answer(out, stream, &[], &body, Some("0"));
            false
        }
        Misbehaviour::UnknownEncoding => {
            let body = [1, 0, 0, 0, 3, 1, 2, 3];
            answer(
                out,
                stream,
                &[("grpc-encoding", "x-hostile")],
                &body,
                Some("0"),
            );
            false
        }
        Misbehaviour::MissingTrailers => {
            answer(out, stream, &[], &ok_message, None);
            false
        }
        Misbehaviour::StatusNotNumber => {
            answer(out, stream, &[], &ok_message, Some("zero"));
            false
        }
        Misbehaviour::ClosedMidFrame => {
            put(out, kind::HEADERS, flag::END_HEADERS, stream, &block(&[]));
            Head {
                len: 100,
                kind: kind::DATA,
                flags: 0,
                stream,
            }
            .put(out);
            out.put_slice(&[0, 0, 0]);
            true
        }
        Misbehaviour::StopsReading
        | Misbehaviour::ZeroStreams
        | Misbehaviour::PingFlood
        | Misbehaviour::NeverSpeaks => false,
    }
}

/// A response: headers (`:status` 200, content type, `extra`), `body` in one DATA frame, and
/// trailers with `grpc-status` when given (else the DATA ends the stream).
fn answer(
    out: &mut BytesMut,
    stream: u32,
    extra: &[(&str, &str)],
    body: &[u8],
    status: Option<&str>,
) {
    put(out, kind::HEADERS, flag::END_HEADERS, stream, &block(extra));
    let end = if status.is_none() {
        flag::END_STREAM
    } else {
        0
    };
    put(out, kind::DATA, end, stream, body);
    if let Some(status) = status {
        let mut trailers = BytesMut::new();
        literal(&mut trailers, "grpc-status", status);
        put(
            out,
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            stream,
            &trailers,
        );
    }
}

/// A response's header block: `:status: 200` (static index 8), the gRPC content type, `extra`.
fn block(extra: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(0x80 | 8);
    literal(&mut out, "content-type", "application/grpc");
    for (name, value) in extra {
        literal(&mut out, name, value);
    }
    out
}

/// Appends a literal field without indexing, new name, short strings (RFC 7541 §6.2.2).
fn literal(out: &mut BytesMut, name: &str, value: &str) {
    out.put_u8(0);
    for text in [name, value] {
        out.put_u8(text.len() as u8);
        out.put_slice(text.as_bytes());
    }
}

fn put(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    Head {
        len: payload.len(),
        kind,
        flags,
        stream,
    }
    .put(out);
    out.put_slice(payload);
}

/// An HTTP/2 server (the `h2` crate) that takes connections and is never asked anything: the
/// run's tonic pool needs a server to connect to, and sends nothing in these runs.
async fn quiet_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut connection) = h2::server::Builder::new()
                    .handshake::<_, Bytes>(socket)
                    .await
                {
                    while let Some(Ok(_)) = connection.accept().await {}
                }
            });
        }
    });
    address
}

/// What one run against a hostile target came to.
struct Run {
    phase: PhaseReport,
    took: Duration,
}

/// Runs the paced load against `target` (`http://` or `https://`) in-process, and checks what
/// every case must hold: the run ended within its deadline of its scheduled end, every request
/// scheduled was sent or counted as dropped, and every one sent has exactly one outcome.
async fn run_against(target: &str) -> Run {
    let options = ConnectOptions {
        connections: 1,
        connect_timeout: CONNECT_TIMEOUT,
        ..ConnectOptions::default()
    };
    let pool = Pool::connect(&quiet_server().await, &options)
        .await
        .expect("quiet server");
    let headers = Metadata::default();
    let wire = Target::new(target, &options, &headers).expect("target");
    let ctx = Context {
        pool: pool.clone(),
        timeout: DEADLINE,
        headers,
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        budget: Arc::new(RetryBudget::new(0.1)),
        stop: Stop::default(),
        progress: Progress::new(false),
        senders: Arc::new(Senders::start(1, Some((Arc::new(wire), 2))).expect("senders")),
        abort_on_fail: None,
        metrics_url: None,
        client: None,
        recall: Recall::new(0.0),
        server_stats: false,
        templates: Templates::vecrig_v1(),
    };
    let scenario = Scenario {
        name: "hostile".into(),
        description: format!("{RATE} searches a second for {DURATION:?}"),
        parameters: Default::default(),
        phases: vec![Phase {
            name: "paced".into(),
            model: Model::Paced {
                workers: 4,
                rate: RATE,
                duration: DURATION,
            },
        }],
        workload: Workload::new(WorkloadKind::Vector, 8, 42, 10),
        thresholds: Vec::new(),
        monitor_every: None,
        check_recovery: false,
        timeout: None,
        identities: Vec::new(),
    };
    let started = Instant::now();
    let report = tokio::time::timeout(
        DURATION + DEADLINE + Duration::from_secs(30),
        run_scenario(&ctx, &scenario, pool.client()),
    )
    .await
    .expect("the run ended by itself");
    let took = started.elapsed();
    let phase = report.phases.into_iter().next().expect("one phase");
    println!(
        "{target}: {took:?}, {} sent, {} dropped, {:?}, {:?}",
        phase.requests, phase.dropped, phase.codes, phase.failures
    );
    assert!(
        took <= DURATION + DEADLINE + SLACK,
        "the run took {took:?}, beyond its deadline of its scheduled end"
    );
    let scheduled = (RATE * DURATION.as_secs_f64()) as u64;
    assert_eq!(
        phase.requests + phase.dropped,
        scheduled,
        "every request scheduled is sent or dropped: {:?}",
        phase.codes
    );
    assert_eq!(
        phase.codes.values().sum::<u64>(),
        phase.requests,
        "one outcome per request sent"
    );
    assert!(phase.requests > 0, "requests were sent");
    assert!(
        resident_bytes() < 1 << 30,
        "memory stays bounded: {} bytes resident",
        resident_bytes()
    );
    Run { phase, took }
}

/// The process's resident memory (0 where /proc is not there).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Runs the load against a server doing `misbehaviour`; every outcome's code is one of
/// `allowed`, and each of `seen` occurs.
async fn case(misbehaviour: Misbehaviour, allowed: &[&str], seen: &[&str]) -> Run {
    let address = hostile_server(misbehaviour).await;
    let run = run_against(&format!("http://{address}")).await;
    check_codes(&run, allowed, seen);
    run
}

fn check_codes(run: &Run, allowed: &[&str], seen: &[&str]) {
    let allowed: BTreeSet<&str> = allowed.iter().copied().collect();
    for (code, n) in &run.phase.codes {
        assert!(
            allowed.contains(code.as_str()) || *n == 0,
            "{n} requests ended {code}, expected only {allowed:?} (took {:?})",
            run.took
        );
    }
    for code in seen {
        assert!(
            run.phase.codes.get(*code).is_some_and(|&n| n > 0),
            "expected some {code}: {:?}",
            run.phase.codes
        );
        // The report says what happened: each failure's text after its code.
        if *code != "OK" {
            assert!(
                run.phase
                    .failures
                    .keys()
                    .any(|text| text.starts_with(&format!("{code}: "))),
                "the report says why requests ended {code}: {:?}",
                run.phase.failures
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_mid_streams_ends_the_untaken_requests_unavailable() {
    case(
        Misbehaviour::GoawayMidStreams,
        &["OK", "UNAVAILABLE"],
        &["OK", "UNAVAILABLE"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_ends_each_request_internal() {
    case(Misbehaviour::RstFlood, &["INTERNAL"], &["INTERNAL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_ends_each_request_at_its_deadline() {
    case(
        Misbehaviour::StopsReading,
        &["DEADLINE_EXCEEDED"],
        &["DEADLINE_EXCEEDED"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_concurrent_streams_end_each_request_at_its_deadline() {
    case(
        Misbehaviour::ZeroStreams,
        &["DEADLINE_EXCEEDED"],
        &["DEADLINE_EXCEEDED"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_that_reads_no_answer_is_cut_off() {
    case(
        Misbehaviour::PingFlood,
        &["INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED"],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_beyond_any_sane_size_end_the_requests_internal() {
    case(
        Misbehaviour::HugeHeaders,
        &["INTERNAL", "UNAVAILABLE"],
        &["INTERNAL"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_for_a_stream_never_opened_is_a_protocol_error() {
    case(
        Misbehaviour::DataForUnopenedStream,
        &["INTERNAL", "UNAVAILABLE"],
        &["INTERNAL"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_its_length_prefix_is_internal() {
    case(
        Misbehaviour::BodyLongerThanPrefix,
        &["INTERNAL"],
        &["INTERNAL"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_an_unknown_encoding_is_internal() {
    case(Misbehaviour::UnknownEncoding, &["INTERNAL"], &["INTERNAL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_trailers_is_internal() {
    case(Misbehaviour::MissingTrailers, &["INTERNAL"], &["INTERNAL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_status_that_is_not_a_number_is_internal() {
    case(Misbehaviour::StatusNotNumber, &["INTERNAL"], &["INTERNAL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_mid_frame_is_unavailable() {
    case(
        Misbehaviour::ClosedMidFrame,
        &["UNAVAILABLE"],
        &["UNAVAILABLE"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_speaks_is_unavailable_or_too_late() {
    case(
        Misbehaviour::NeverSpeaks,
        &["UNAVAILABLE", "DEADLINE_EXCEEDED"],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_ends_is_unavailable_or_too_late() {
    // The server reads the ClientHello and answers nothing.
    let address = hostile_server(Misbehaviour::NeverSpeaks).await;
    let run = run_against(&format!("https://{address}")).await;
    check_codes(&run, &["UNAVAILABLE", "DEADLINE_EXCEEDED"], &[]);
}
