//! Prometheus metrics: what the server is doing, in the names operators expect, served as text
//! on `--metrics-listen` (off by default).
//!
//! - `vecrig_grpc_requests_total{method,code}`: every VectorIndex call by its final gRPC code,
//!   including those admission shed and those auth refused ([`MetricsLayer`] sees them all).
//! - `vecrig_admission_queue_wait_seconds{method}` and `vecrig_service_time_seconds{method}`:
//!   histograms of time spent waiting for admission and being served.
//! - `vecrig_shed_requests_total{reason}`: refusals by [`ShedReason`](crate::admission::ShedReason).
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
//! - `vecrig_open_connections`, `vecrig_connections_refused_total` and
//!   `vecrig_connections_evicted_total`: the connection cap's figures (`crate::net::gate`).
//! - `vecrig_lane_connections{lane}`: open connections per request-path lane (see
//!   `net::lanes`); a flooding address's connections are in one lane (two if it keeps
//!   connecting while it floods).
//!
//! The endpoint is plain HTTP/1.1 (hyper), on its own listener, so a scrape never competes with
//! gRPC admission and a firewall can keep it private.

//!
//! The parts: [`registry`] (every series), [`recorder`] (what admission records), [`render`]
//! (the exposition at scrape time), [`endpoint`] (the HTTP listener), [`layer`] and [`body`]
//! (counting calls by their final code), [`labels`] (the label sets).

mod body;
mod endpoint;
mod labels;
mod layer;
mod recorder;
mod registry;
mod render;
#[cfg(test)]
mod tests;

pub use endpoint::{Args, bind, serve_metrics};
pub use layer::{MetricsLayer, MetricsService};
pub use registry::{CLIENT_LABELS, ConnectionFigures, Metrics, PacingFigures};
