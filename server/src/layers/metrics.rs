//! Prometheus metrics: what the server is doing, in the names operators expect, served as text
//! on `--metrics-listen` (off by default).
//!
//! - `vecrig_grpc_requests_total{method,code}`: every VectorIndex call by its final gRPC code,
//!   including those admission shed and those auth refused ([`MetricsLayer`] sees them all).
//! - `vecrig_admission_queue_wait_seconds{method}` and `vecrig_service_time_seconds{method}`:
//!   histograms of time spent waiting for admission and being served.
//! - `vecrig_shed_requests_total{reason}`: refusals by [`ShedReason`].
//! - `vecrig_client_requests_total{client,outcome}`: admitted and shed requests by client (the
//!   peer address, or `tenant:NAME`), so an operator can see who is being shed; the first
//!   [`CLIENT_LABELS`] clients get a label of their own and the rest count as `other` (a
//!   counter's labels cannot change once seen, so "the top N" is the first N).
//! - `vecrig_client_queued_requests{client}`, `vecrig_client_in_flight_requests{client}`: the
//!   clients holding the most places now (the top [`CLIENT_LABELS`], then `other`).
//! - gauges read at scrape time: `vecrig_in_flight_requests`, `vecrig_queued_requests`,
//!   `vecrig_concurrency_limit`, `vecrig_index_points`, `vecrig_index_unindexed_points` (written,
//!   searched exactly, not yet in the graph), `vecrig_wal_sequence`,
//!   `vecrig_snapshot_age_seconds`, `process_resident_memory_bytes`, and
//!   `vecrig_cpu_seconds_total{part="index"|"serving"}` (CPU time of index work, and of the
//!   rest, the request path above all: see `cpu`), and
//!   `vecrig_search_breadth` (the share of their ef searches run with: below 1 while
//!   `--brownout` narrows them, see `admission::brownout`).
//! - pacing (see `net::pacing`): `vecrig_paced_answers_total` (answers that were not admitted
//!   work, charged to their connections), `vecrig_connection_pauses_total`,
//!   `vecrig_connection_room_wakes_total` (paused connections read early because the queue had
//!   room), `vecrig_paused_connections` now, `vecrig_answer_cpu_seconds` (the request
//!   path's CPU per cheap answer as last measured: what pacing's CPU ceiling prices a refusal
//!   at), `vecrig_served_request_path_cpu_seconds` (the same per served request), and
//!   `vecrig_cheap_answer_cpu_seconds_total` (CPU spent on cheap answers: its rate over the
//!   CPUs is the share of CPU spent refusing).
//! - `vecrig_lane_connections{lane}`: open connections per request-path lane (see
//!   `net::lanes`); a flooding address's connections are all in one lane.
//!
//! The endpoint is plain HTTP/1.1 (hyper), on its own listener, so a scrape never competes with
//! gRPC admission and a firewall can keep it private.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

use crate::admission::{Admission, Recorder, ShedReason};
use crate::method::Method;
use crate::storage::StorageSlot;

/// The metrics flag (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "VECRIG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabel {
    part: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientOutcome {
    client: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabel {
    client: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabel {
    lane: String,
}

/// Clients with metric labels of their own; the rest are `other` (bounded cardinality).
pub const CLIENT_LABELS: usize = 16;

fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s, doubling: covers a cached ANN search and a stalled exact scan alike.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<MethodCode, Counter>,
    queue_wait: Family<MethodLabel, Histogram>,
    service_time: Family<MethodLabel, Histogram>,
    shed: Family<ReasonLabel, Counter>,
    client_requests: Family<ClientOutcome, Counter>,
    client_queued: Family<ClientLabel, Gauge>,
    client_in_flight: Family<ClientLabel, Gauge>,
    /// The clients given labels of their own, first come.
    client_labels: std::sync::Mutex<std::collections::HashMap<crate::caller::ClientKey, String>>,
    in_flight: Gauge,
    queued: Gauge,
    limit: Gauge,
    points: Gauge,
    unindexed: Gauge,
    search_breadth: Gauge<f64, std::sync::atomic::AtomicU64>,
    cpu: Family<PartLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    wal_sequence: Gauge,
    snapshot_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident_memory: Gauge,
    paced_answers: Counter<u64>,
    connection_pauses: Counter<u64>,
    room_wakes: Counter<u64>,
    paused_connections: Gauge,
    lane_connections: Family<LaneLabel, Gauge>,
    answer_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    served_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    cheap_cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Held while the pacing counters catch up, so two scrapes at once do not add twice.
    pacing_catch_up: std::sync::Mutex<()>,
}

/// Pacing's figures since start, as the pacer counts them (see `net::pacing::PacerStats`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PacingFigures {
    /// Answers that were not admitted work, charged to their connections.
    pub charged: u64,
    /// Times a connection was paused.
    pub pauses: u64,
    /// Paused connections read early because admission had room.
    pub woken_for_room: u64,
    /// Connections paused now with work waiting.
    pub paused: u64,
    /// The request path's CPU per cheap answer, as last measured.
    pub answer_cpu: std::time::Duration,
    /// The request path's CPU per served request, as last measured.
    pub served_cpu: std::time::Duration,
    /// Estimated CPU spent on cheap answers since start.
    pub cheap_cpu_total: std::time::Duration,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<MethodCode, Counter>::default();
        registry.register(
            "vecrig_grpc_requests",
            "VectorIndex calls by method and final gRPC code",
            requests.clone(),
        );
        let queue_wait: Family<MethodLabel, Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "vecrig_admission_queue_wait_seconds",
            "Time admitted requests waited for a slot",
            queue_wait.clone(),
        );
        let service_time: Family<MethodLabel, Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "vecrig_service_time_seconds",
            "Time admitted requests held their slot (being served)",
            service_time.clone(),
        );
        let shed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "vecrig_shed_requests",
            "Requests refused by admission before running, by reason",
            shed.clone(),
        );
        let client_requests = Family::<ClientOutcome, Counter>::default();
        registry.register(
            "vecrig_client_requests",
            "VectorIndex calls that reached admission, by client and outcome (admitted, shed)",
            client_requests.clone(),
        );
        let client_queued = Family::<ClientLabel, Gauge>::default();
        registry.register(
            "vecrig_client_queued_requests",
            "Requests waiting for admission now, by client (the heaviest, then other)",
            client_queued.clone(),
        );
        let lane_connections = Family::<LaneLabel, Gauge>::default();
        registry.register(
            "vecrig_lane_connections",
            "Open connections per request-path lane (each client address's in one lane)",
            lane_connections.clone(),
        );
        let client_in_flight = Family::<ClientLabel, Gauge>::default();
        registry.register(
            "vecrig_client_in_flight_requests",
            "Requests being served now, by client (the heaviest, then other)",
            client_in_flight.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let in_flight = gauge(
            &mut registry,
            "vecrig_in_flight_requests",
            "Requests being served now",
        );
        let queued = gauge(
            &mut registry,
            "vecrig_queued_requests",
            "Requests waiting for admission now",
        );
        let limit = gauge(
            &mut registry,
            "vecrig_concurrency_limit",
            "Admission's concurrency limit in slots (0: admission off)",
        );
        let points = gauge(&mut registry, "vecrig_index_points", "Points in the index");
        let unindexed = gauge(
            &mut registry,
            "vecrig_index_unindexed_points",
            "Points written but not yet in the graph (searched exactly until they are)",
        );
        let search_breadth = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "vecrig_search_breadth",
            "Share of their ef that searches run with now (below 1 while --brownout narrows them)",
            search_breadth.clone(),
        );
        let cpu = Family::<PartLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "vecrig_cpu_seconds",
            "CPU time of the server process: index work (searches, embedding, applying and indexing writes), and serving (the rest: connections, HTTP/2, admission, refusals, health, Stats)",
            cpu.clone(),
        );
        // Pacing's figures are counted by the pacer; these mirror them at scrape time.
        let counter_gauge = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::<u64>::default();
            registry.register(name, help, c.clone());
            c
        };
        let paced_answers = counter_gauge(
            &mut registry,
            "vecrig_paced_answers",
            "Answers that were not admitted work (refusals, health, Stats, reflection), charged to their connections",
        );
        let connection_pauses = counter_gauge(
            &mut registry,
            "vecrig_connection_pauses",
            "Times a connection was paused (not read) for asking for more such answers than the server's budget",
        );
        let room_wakes = counter_gauge(
            &mut registry,
            "vecrig_connection_room_wakes",
            "Paused connections read early because admission had room",
        );
        let paused_connections = gauge(
            &mut registry,
            "vecrig_paused_connections",
            "Connections paused now with work waiting",
        );
        let answer_cpu = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "vecrig_answer_cpu_seconds",
            "Request-path CPU per cheap answer (a refusal, health check, Stats, error), as last measured: the serving CPU less the served requests' share, over the cheap answers; what pacing's CPU ceiling prices a refusal at",
            answer_cpu.clone(),
        );
        let served_cpu = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "vecrig_served_request_path_cpu_seconds",
            "Request-path CPU per served request (HTTP/2, decoding, hand-off, answer; not the index work), as last measured where few answers were cheap",
            served_cpu.clone(),
        );
        let cheap_cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "vecrig_cheap_answer_cpu_seconds",
            "Estimated request-path CPU spent on cheap answers (refusals, health, Stats, errors): its rate over the CPUs is the share of CPU spent refusing",
            cheap_cpu.clone(),
        );
        let wal_sequence = gauge(
            &mut registry,
            "vecrig_wal_sequence",
            "Sequence number of the last durable write",
        );
        let snapshot_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "vecrig_snapshot_age_seconds",
            "Seconds since the last snapshot was written (-1: none yet)",
            snapshot_age.clone(),
        );
        let resident_memory = gauge(
            &mut registry,
            "process_resident_memory_bytes",
            "Resident memory of the server process",
        );
        for reason in ShedReason::ALL {
            // Present from the start at 0, so rate() works from the first scrape.
            let _ = shed.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        Self {
            registry,
            requests,
            queue_wait,
            service_time,
            shed,
            client_requests,
            client_queued,
            client_in_flight,
            client_labels: std::sync::Mutex::default(),
            in_flight,
            queued,
            limit,
            points,
            unindexed,
            search_breadth,
            cpu,
            wal_sequence,
            snapshot_age,
            resident_memory,
            paced_answers,
            connection_pauses,
            room_wakes,
            paused_connections,
            lane_connections,
            answer_cpu,
            served_cpu,
            cheap_cpu,
            pacing_catch_up: std::sync::Mutex::default(),
        }
    }

    /// The metric label of `client`: its own for the first [`CLIENT_LABELS`], else `other`.
    fn client_label(&self, client: &crate::caller::ClientKey) -> String {
        let mut labels = self.client_labels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(label) = labels.get(client) {
            return label.clone();
        }
        if labels.len() < CLIENT_LABELS {
            let label = client.label();
            labels.insert(client.clone(), label.clone());
            return label;
        }
        "other".to_string()
    }

    fn count(&self, method: &'static str, code: tonic::Code) {
        self.requests
            .get_or_create(&MethodCode {
                method,
                code: code_label(code),
            })
            .inc();
    }

    /// The text exposition, with the gauges read now.
    pub fn render(
        &self,
        admission: &Admission,
        storage: &StorageSlot,
        data_dir: &std::path::Path,
        pacing: PacingFigures,
        lanes: &[usize],
    ) -> String {
        let stats = admission.stats();
        self.in_flight.set(stats.in_flight as i64);
        self.queued.set(stats.queued as i64);
        self.limit.set(stats.limit as i64);
        self.search_breadth.set(admission.search_breadth());
        if let Some(storage) = storage.get() {
            self.points.set(storage.engine().len() as i64);
            self.unindexed.set(storage.engine().tail_len() as i64);
            self.wal_sequence.set(storage.durable_sequence() as i64);
        }
        let age = std::fs::metadata(data_dir.join(crate::storage::snapshot::POINTS_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(-1.0, |d| d.as_secs_f64());
        self.snapshot_age.set(age);
        self.resident_memory
            .set(crate::process::resident_memory_bytes().unwrap_or(0) as i64);
        // Counters only move up: add what the pacer counted since the last scrape.
        let catching_up = self
            .pacing_catch_up
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let catch_up = |counter: &Counter<u64>, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.paced_answers, pacing.charged);
        let split = crate::cpu::split();
        for (part, seconds) in [("index", split.index_s), ("serving", split.serving_s)] {
            let counter = self.cpu.get_or_create(&PartLabel { part });
            counter.inc_by((seconds - counter.get()).max(0.0));
        }
        catch_up(&self.connection_pauses, pacing.pauses);
        catch_up(&self.room_wakes, pacing.woken_for_room);
        self.paused_connections.set(pacing.paused as i64);
        for (lane, connections) in lanes.iter().enumerate() {
            self.lane_connections
                .get_or_create(&LaneLabel {
                    lane: lane.to_string(),
                })
                .set(*connections as i64);
        }
        self.answer_cpu.set(pacing.answer_cpu.as_secs_f64());
        self.served_cpu.set(pacing.served_cpu.as_secs_f64());
        self.cheap_cpu
            .inc_by((pacing.cheap_cpu_total.as_secs_f64() - self.cheap_cpu.get()).max(0.0));
        drop(catching_up);
        // Gauges of the clients holding places now: last scrape's clients may be gone.
        self.client_queued.clear();
        self.client_in_flight.clear();
        for load in admission.client_loads(CLIENT_LABELS) {
            let label = ClientLabel {
                client: load.client,
            };
            self.client_queued
                .get_or_create(&label)
                .set(load.queued as i64);
            self.client_in_flight
                .get_or_create(&label)
                .set(load.in_flight as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Recorder for Metrics {
    fn shed(&self, reason: ShedReason, client: &crate::caller::ClientKey) {
        self.shed
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
        self.client_requests
            .get_or_create(&ClientOutcome {
                client: self.client_label(client),
                outcome: "shed",
            })
            .inc();
    }

    fn admitted(&self, client: &crate::caller::ClientKey) {
        self.client_requests
            .get_or_create(&ClientOutcome {
                client: self.client_label(client),
                outcome: "admitted",
            })
            .inc();
    }

    fn queue_wait(&self, method: Method, waited: Duration) {
        self.queue_wait
            .get_or_create(&MethodLabel {
                method: method.name(),
            })
            .observe(waited.as_secs_f64());
    }

    fn service_time(&self, method: Method, took: Duration) {
        self.service_time
            .get_or_create(&MethodLabel {
                method: method.name(),
            })
            .observe(took.as_secs_f64());
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let render = Arc::clone(&render);
                async move {
                    let response = if request.uri().path() == "/metrics" {
                        http::Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(render())))
                    } else {
                        http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    };
                    response.map_err(|e| e.to_string())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Binds the metrics address (separately, so a bad address fails start-up loudly).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Counts every VectorIndex call by method and final gRPC code, reading the code from the
/// response headers (errors answered at once) or from the trailers when the body ends.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A service whose calls are counted.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S: NamedService> NamedService for MetricsService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = Arc::clone(&self.metrics);
        let method = Method::of(request.uri().path()).name();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let early = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from);
            let (parts, body) = response.into_parts();
            let body = CountedBody {
                inner: body,
                metrics,
                method,
                code: early,
                counted: false,
            };
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// A response body that counts its call once it ends (or is dropped unfinished: CANCELLED).
struct CountedBody {
    inner: Body,
    metrics: Arc<Metrics>,
    method: &'static str,
    code: Option<tonic::Code>,
    counted: bool,
}

impl CountedBody {
    fn finish(&mut self, code: tonic::Code) {
        if !self.counted {
            self.counted = true;
            self.metrics.count(self.method, code);
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Unknown, tonic::Code::from);
                    self.finish(code);
                }
            }
            Poll::Ready(None) => {
                let code = self.code.unwrap_or(tonic::Code::Unknown);
                self.finish(code);
            }
            Poll::Ready(Some(Err(_))) => self.finish(tonic::Code::Internal),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.finish(code);
    }
}
