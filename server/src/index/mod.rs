//! The vector index proper: stored points, the exact scan, and the approximate (HNSW) index.
//!
//! Nothing here knows about tonic or tokio: every call is synchronous and may block for as long
//! as the work takes, so callers run it on a blocking pool (see `engine`). The pieces:
//! - [`store::PointStore`] owns every point (vector, payload) and answers exact scans;
//! - [`Ann`] is our narrow view of an approximate index; [`graph::GraphAnn`] implements it
//!   with our own HNSW graph, and `usearch::UsearchAnn` with usearch's (only in a build with
//!   the `usearch` cargo feature: usearch is C++);
//! - [`distance`] defines what "near" means for each [`Metric`], identically for both;
//! - [`tail::Tail`] holds written points the graph has not taken yet, scanned exactly;
//! - [`open`] creates or loads the [`AnnEngine`] the server runs;
//! - [`kernels`] computes it with SIMD chosen for this CPU, and prefetches for the graph (the
//!   index's only `unsafe`).

pub mod distance;
pub mod graph;
pub mod kernels;
pub mod open;
pub mod store;
pub mod tail;
#[cfg(feature = "usearch")]
pub mod usearch;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// How distance between two vectors is measured. Every metric is smaller-is-nearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// `1 - cos(a, b)`: direction only, from 0 (same direction) to 2 (opposite).
    #[default]
    Cosine,
    /// Squared Euclidean distance.
    L2,
    /// `1 - a·b`: inner product, for vectors whose length carries meaning.
    Ip,
}

impl Metric {
    /// The name used on the wire (`StatsResponse.metric`) and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Ip => "ip",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            "ip" => Ok(Metric::Ip),
            other => Err(format!(
                "unknown metric {other:?}: expected cosine, l2 or ip"
            )),
        }
    }
}

/// Which implementation of [`Ann`] the server runs (`--ann-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnEngine {
    /// usearch's HNSW (`usearch::UsearchAnn`), in a build with the `usearch` feature only.
    #[cfg(feature = "usearch")]
    Usearch,
    /// Our own HNSW graph ([`graph::GraphAnn`]): the default, faster to search and to build,
    /// and searches stay fast while it indexes (see README's `--ann-engine`).
    #[default]
    Graph,
}

/// What `--ann-engine usearch` answers in a build without usearch: how to get one.
pub const NO_USEARCH: &str = "this vecrig-server was built without usearch (a C++ library, \
    behind the cargo feature `usearch`); build it with \
    `cargo build --release --features vecrig-server/usearch`, or use --ann-engine graph";

impl AnnEngine {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            #[cfg(feature = "usearch")]
            AnnEngine::Usearch => "usearch",
            AnnEngine::Graph => "graph",
        }
    }
}

impl fmt::Display for AnnEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AnnEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            #[cfg(feature = "usearch")]
            "usearch" => Ok(AnnEngine::Usearch),
            #[cfg(not(feature = "usearch"))]
            "usearch" => Err(NO_USEARCH.to_string()),
            "graph" => Ok(AnnEngine::Graph),
            other => Err(format!(
                "unknown ann engine {other:?}: expected graph or usearch"
            )),
        }
    }
}

/// Graph parameters of the HNSW index, which mean the same to either engine.
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    /// Links per node (HNSW `M`).
    pub connectivity: usize,
    /// Candidates explored while inserting (`ef_construction`).
    pub ef_construction: usize,
    /// Searches that may run at once.
    pub search_threads: usize,
    /// Inserts that may run at once, where the implementation allows it (our graph does;
    /// usearch's adds run one at a time).
    pub insert_threads: usize,
    /// Which implementation builds the graph (`--ann-engine`).
    pub engine: AnnEngine,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            connectivity: 16,
            ef_construction: 128,
            search_threads: 4,
            insert_threads: 1,
            engine: AnnEngine::Graph,
        }
    }
}

/// One result of a search: a point id and its distance to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// The point's id.
    pub id: u64,
    /// Its distance to the query under the index's metric (smaller is nearer).
    pub distance: f32,
}

/// Failures inside an index. None of these are the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The approximate index refused an operation.
    #[error("ann index: {0}")]
    Ann(String),
    /// Reading or writing index files failed.
    #[error("index file {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// An approximate nearest-neighbour index over `(id, vector)` pairs.
///
/// Concurrency contract, which callers must keep: `insert` of distinct ids may come from up to
/// [`Ann::insert_threads`] threads at once; `remove` and `save` come from one writer at a
/// time, with no insert running; `search` may run concurrently with all of them and with each
/// other from at most [`Ann::search_threads`] threads at once.
pub trait Ann: Send + Sync {
    /// Inserts `vector` under `id`, replacing any vector already stored under it.
    fn insert(&self, id: u64, vector: &[f32]) -> Result<(), IndexError>;
    /// Removes `id`; absent ids are ignored.
    fn remove(&self, id: u64) -> Result<(), IndexError>;
    /// Up to `k` nearest neighbours, nearest first, exploring at least `ef` candidates.
    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbor>, IndexError>;
    /// Whether `id` is in the index.
    fn contains(&self, id: u64) -> bool;
    /// Number of vectors in the index.
    fn len(&self) -> usize;
    /// Whether the index is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How many searches may run at once.
    fn search_threads(&self) -> usize;
    /// How many inserts (of distinct ids) may run at once.
    fn insert_threads(&self) -> usize {
        1
    }
    /// Writes the index to `path` (the caller makes it atomic).
    fn save(&self, path: &Path) -> Result<(), IndexError>;
}
