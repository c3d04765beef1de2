//! Who the server takes a client to be (`server/src/caller.rs`), seen from outside through its
//! per-client metrics: a forwarding header names the client only when a configured trusted
//! proxy sends it, and tenants behind one address are counted apart and served on lanes of
//! their own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::common::flood::{self, Flood};
use crate::common::{metrics, process};

const DIMS: usize = 8;
const SEARCH: &str = "/vecrig.v1.VectorIndex/Search";
const DIRECT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Waits until the index has loaded (calls before are answered UNAVAILABLE).
async fn serving(addr: SocketAddr) {
    let target = format!("http://{addr}");
    process::wait_serving(&target, Duration::from_secs(30), Duration::from_millis(20)).await;
}

/// A few searches, one at a time, from `from` with `headers`.
fn searches(addr: SocketAddr, from: IpAddr, headers: Vec<(&'static str, String)>) -> Flood {
    Flood {
        addr,
        connections: 1,
        streams: 1,
        path: SEARCH,
        body: flood::search_frame(DIMS, 3, 16, 5),
        headers,
        duration: Duration::from_millis(500),
        bind: Some(from),
        send_every: Some(Duration::from_millis(20)),
    }
}

/// Whether the server admitted `server` requests for a client that saw `ok` OK answers: the
/// client counts those answered within its window, the server also the one still open at
/// its end.
fn agrees(server: u64, ok: u64) -> bool {
    server == ok || server == ok + 1
}

/// `vecrig_client_requests_total{client,outcome="admitted"}`; 0 if absent.
async fn admitted(metrics: SocketAddr, client: &str) -> u64 {
    let text = metrics::scrape(metrics).await.expect("metrics endpoint");
    let wanted =
        format!("vecrig_client_requests_total{{client=\"{client}\",outcome=\"admitted\"}}");
    metrics::series(&text, &wanted).map_or(0, |value| value as u64)
}

#[tokio::test]
async fn a_forwarding_header_counts_only_from_a_trusted_proxy() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut command = process::server_command();
    command
        .args(["--dimensions", &DIMS.to_string()])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--trusted-proxies", "127.0.0.2/32,10.0.0.0/8"]);
    let (_server, addr, metrics) = process::spawn_with_metrics(command).await;
    serving(addr).await;

    // A spoofed header from a peer that is not a configured proxy: the peer is the client.
    let spoofed = vec![("x-forwarded-for", "203.0.113.9".to_string())];
    let direct = flood::run(searches(addr, DIRECT, spoofed), None)
        .join()
        .expect("direct");
    assert!(direct.ok() > 0, "{direct:?}");
    assert_eq!(admitted(metrics, "203.0.113.9").await, 0);
    let counted = admitted(metrics, "127.0.0.1").await;
    assert!(
        agrees(counted, direct.ok()),
        "{counted} vs {:?}",
        direct.codes
    );

    // From the trusted proxy: the rightmost entry that is not a trusted proxy is the client
    // (the first entry is the client's own claim, the last a trusted hop's).
    let forwarded = vec![(
        "x-forwarded-for",
        "198.51.100.1, 203.0.113.7, 10.1.2.3".to_string(),
    )];
    let proxied = flood::run(searches(addr, PROXY, forwarded), None)
        .join()
        .expect("proxied");
    assert!(proxied.ok() > 0, "{proxied:?}");
    let counted = admitted(metrics, "203.0.113.7").await;
    assert!(
        agrees(counted, proxied.ok()),
        "{counted} vs {:?}",
        proxied.codes
    );
    assert_eq!(admitted(metrics, "127.0.0.2").await, 0);
    assert_eq!(admitted(metrics, "198.51.100.1").await, 0);
}

/// A server whose token file holds `tokens` (which name tenants), with its metrics endpoint,
/// serving; the temporary directory holding its files lives as long as the first value.
async fn with_tenants(
    tokens: &str,
) -> (
    tempfile::TempDir,
    tokio::process::Child,
    SocketAddr,
    SocketAddr,
) {
    let data = tempfile::tempdir().expect("tempdir");
    let path = data.path().join("tokens");
    std::fs::write(&path, tokens).expect("tokens");
    let mut command = process::server_command();
    command
        .args(["--dimensions", &DIMS.to_string()])
        .arg("--data-dir")
        .arg(data.path().join("index"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--auth-token-file")
        .arg(&path);
    let (server, addr, metrics) = process::spawn_with_metrics(command).await;
    serving(addr).await;
    (data, server, addr, metrics)
}

#[tokio::test]
async fn tenants_behind_one_address_are_counted_apart() {
    let (_data, _server, addr, metrics) =
        with_tenants("alpha-secret alpha\nbeta-secret beta 2\n").await;
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];
    let alpha = flood::run(searches(addr, DIRECT, bearer("alpha-secret")), None);
    let beta = flood::run(searches(addr, DIRECT, bearer("beta-secret")), None);
    // Each tenant's connection is read and answered on a request-path lane of its own,
    // chosen by its first request's token.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let lanes = metrics::lane_connections(metrics).await;
    assert_eq!(
        lanes.iter().filter(|&&open| open == 1).count(),
        2,
        "one connection in each of two lanes: {lanes:?}"
    );
    let (alpha, beta) = (alpha.join().expect("alpha"), beta.join().expect("beta"));
    assert!(alpha.ok() > 0 && beta.ok() > 0, "{alpha:?} {beta:?}");
    let counted = admitted(metrics, "tenant:alpha").await;
    assert!(
        agrees(counted, alpha.ok()),
        "{counted} vs {:?}",
        alpha.codes
    );
    let counted = admitted(metrics, "tenant:beta").await;
    assert!(agrees(counted, beta.ok()), "{counted} vs {:?}", beta.codes);
    assert_eq!(admitted(metrics, "127.0.0.1").await, 0);
}

/// gRPC's C-core clients (Python here; C++, Ruby and the others alike), like Java's and Go's,
/// send no request before the server's SETTINGS. The server sends them as soon as the
/// client's are in, so such a client's first request, and its token, still pick its lane: a
/// tenant's connection is seated apart from a connection without a token from its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_the_servers_settings_is_seated_by_its_token() {
    if !crate::common::python_or_skip(
        "a_client_that_waits_for_the_servers_settings_is_seated_by_its_token",
        "grpc, grpc_health.v1",
        "python with grpcio and grpcio-health-checking is needed (`scripts/test` installs them \
         in target/pyenv)",
    ) {
        return;
    }
    let (_data, _server, addr, metrics) =
        with_tenants("alpha-secret alpha\nbeta-secret beta\n").await;
    // Two channels, each on a connection of its own (no shared subchannel pool): one without
    // a token, then a tenant's. Each makes a call, says so, and holds its connection open.
    let script = r#"
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
options = [("grpc.use_local_subchannel_pool", 1)]
def call(metadata):
    channel = grpc.insecure_channel(sys.argv[1], options=options)
    started = time.perf_counter()
    try:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=metadata, timeout=5)
    except grpc.RpcError as error:
        print("call failed:", error.code(), flush=True)
    return channel, (time.perf_counter() - started) * 1000
plain, _ = call([])
tenant, ms = call([("authorization", "Bearer alpha-secret")])
print(f"ready: first call on the tenant's connection {ms:.1f} ms", flush=True)
time.sleep(3)
"#;
    let mut child = tokio::process::Command::new(crate::common::python())
        .args(["-c", script, &addr.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("python's output") {
            println!("python: {line}");
            if line.starts_with("ready") {
                return;
            }
        }
        panic!("python ended before its calls were made");
    });
    ready.await.expect("python's calls within 20 s");
    let lanes = metrics::lane_connections(metrics).await;
    // Seated by address alone, the tenant's connection would share the plain one's lane.
    assert_eq!(
        lanes.iter().filter(|&&open| open == 1).count(),
        2,
        "the two connections in two lanes: {lanes:?}"
    );
    let _ = child.wait().await;
}
