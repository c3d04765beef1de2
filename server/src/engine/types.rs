//! The engine's domain types: what a search asks and answers, what a write carries, and the
//! shape of the index.

use crate::index::Metric;
use crate::index::store::Payload;

/// One write, as the engine prepares and applies it and the write-ahead log records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Points inserted or replaced: `(id, vector as indexed, payload)`.
    Upsert(Vec<(u64, Vec<f32>, Payload)>),
    /// Ids removed.
    Delete(Vec<u64>),
}

/// What a search looks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// A vector of the index's width.
    Vector(Vec<f32>),
    /// A text, embedded by the server.
    Text(String),
}

/// A validated search.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// What to look for.
    pub query: Query,
    /// How many neighbours.
    pub k: usize,
    /// Search breadth; `None` for the server default.
    pub ef: Option<usize>,
    /// Brute-force scan instead of the graph.
    pub exact: bool,
    /// Return payloads with the hits.
    pub with_payload: bool,
}

impl Search {
    /// Whether [`Engine::search`] runs this search in place on the calling thread (see
    /// This search run at `breadth` of its `ef` (`default_ef` when it asked for none), never
    /// below its `k` nor 1: what a browning-out server runs (`crate::admission::brownout`).
    /// Exact scans and searches at full breadth are left as they are.
    pub fn narrowed(mut self, breadth: f64, default_ef: usize) -> Self {
        if self.exact || breadth >= 1.0 || breadth.is_nan() {
            return self;
        }
        let ef = self.ef.unwrap_or(default_ef) as f64;
        let narrowed = (ef * breadth.max(0.0)).ceil() as usize;
        self.ef = Some(narrowed.max(self.k).max(1));
        self
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The point's id.
    pub id: u64,
    /// Distance to the query (smaller is nearer).
    pub distance: f32,
    /// The payload, when asked for.
    pub payload: Option<Payload>,
}

/// What a new point is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum PointData {
    /// A vector of the index's width.
    Vector(Vec<f32>),
    /// A text, embedded by the server.
    Text(String),
}

/// A validated point to upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPoint {
    /// Its id.
    pub id: u64,
    /// Its vector or text.
    pub data: PointData,
    /// Its payload.
    pub payload: Payload,
}

/// Static facts about the index.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Vector width.
    pub dimensions: usize,
    /// Distance metric.
    pub metric: Metric,
}
