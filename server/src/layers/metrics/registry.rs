//! The server's metrics: every series, registered at zero in one registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::labels::{
    ClientLabel, ClientOutcome, LaneLabel, MethodCode, MethodLabel, PartLabel, ReasonLabel,
    code_label, latency_histogram,
};
use crate::admission::ShedReason;

/// Clients with metric labels of their own; the rest are `other` (bounded cardinality).
pub const CLIENT_LABELS: usize = 16;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    pub(super) registry: Registry,
    pub(super) requests: Family<MethodCode, Counter>,
    pub(super) queue_wait: Family<MethodLabel, Histogram>,
    pub(super) service_time: Family<MethodLabel, Histogram>,
    pub(super) shed: Family<ReasonLabel, Counter>,
    pub(super) client_requests: Family<ClientOutcome, Counter>,
    pub(super) client_queued: Family<ClientLabel, Gauge>,
    pub(super) client_in_flight: Family<ClientLabel, Gauge>,
    /// The clients given labels of their own, first come.
    pub(super) client_labels:
        std::sync::Mutex<std::collections::HashMap<crate::caller::ClientKey, String>>,
    pub(super) in_flight: Gauge,
    pub(super) queued: Gauge,
    pub(super) limit: Gauge,
    pub(super) points: Gauge,
    pub(super) unindexed: Gauge,
    pub(super) search_breadth: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(super) cpu: Family<PartLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub(super) wal_sequence: Gauge,
    pub(super) snapshot_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(super) resident_memory: Gauge,
    pub(super) paced_answers: Counter<u64>,
    pub(super) connection_pauses: Counter<u64>,
    pub(super) room_wakes: Counter<u64>,
    pub(super) paused_connections: Gauge,
    pub(super) lane_connections: Family<LaneLabel, Gauge>,
    pub(super) open_connections: Gauge,
    pub(super) connections_refused: Counter<u64>,
    pub(super) connections_evicted: Counter<u64>,
    pub(super) answer_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(super) served_cpu: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(super) cheap_cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Held while the pacing counters catch up, so two scrapes at once do not add twice.
    pub(super) pacing_catch_up: std::sync::Mutex<()>,
}

/// Pacing's figures since start, as the pacer counts them ([`crate::net::Pacer::stats`]) and
/// the metrics endpoint shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacingFigures {
    /// Cheap answers (answers that were not admitted work) charged to connections.
    pub charged: u64,
    /// Times a connection was paused.
    pub pauses: u64,
    /// Paused connections woken early because admission had room.
    pub woken_for_room: u64,
    /// Connections paused now with work that room would let in.
    pub paused: u64,
    /// The request path's CPU per cheap answer, as last measured (what the CPU ceiling
    /// prices an excess answer at).
    pub answer_cpu: std::time::Duration,
    /// The request path's CPU per served request, as last measured where few answers were
    /// cheap (zero until then).
    pub served_cpu: std::time::Duration,
    /// Estimated CPU spent on cheap answers since start (each sample's answers at its price).
    pub cheap_cpu_total: std::time::Duration,
}

/// The connection cap's figures, and the open connections per request-path lane, as the
/// metrics endpoint shows them (counted by `crate::net::Gate` and the lanes' seating).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionFigures {
    /// Connections open now, under the cap.
    pub open: u64,
    /// Connections closed at once at the cap since start, with nobody to evict.
    pub refused: u64,
    /// Connections that had not started, closed to make room at the cap since start.
    pub evicted: u64,
    /// Open connections per lane, in lane order.
    pub per_lane: Vec<usize>,
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
        // The connection cap's figures are counted by its gate; these mirror them too.
        let open_connections = gauge(
            &mut registry,
            "vecrig_open_connections",
            "Connections open now, under the cap (--max-connections)",
        );
        let connections_refused = counter_gauge(
            &mut registry,
            "vecrig_connections_refused",
            "Connections closed at once because the connection cap was reached and none could be evicted",
        );
        let connections_evicted = counter_gauge(
            &mut registry,
            "vecrig_connections_evicted",
            "Connections that had sent nothing yet, closed to make room for a new one at the connection cap",
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
            open_connections,
            connections_refused,
            connections_evicted,
            answer_cpu,
            served_cpu,
            cheap_cpu,
            pacing_catch_up: std::sync::Mutex::default(),
        }
    }

    /// The metric label of `client`: its own for the first [`CLIENT_LABELS`], else `other`.
    pub(super) fn client_label(&self, client: &crate::caller::ClientKey) -> String {
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

    pub(super) fn count(&self, method: &'static str, code: tonic::Code) {
        self.requests
            .get_or_create(&MethodCode {
                method,
                code: code_label(code),
            })
            .inc();
    }
}
