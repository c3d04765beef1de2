//! The index's flags.

use crate::index::{AnnEngine, Metric};

/// The index's flags (flattened into the server's); their defaults are written here only.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Vector width.
    #[arg(long, env = "VECRIG_DIMENSIONS", default_value_t = 128)]
    pub dimensions: u32,
    /// Distance metric: cosine, l2 or ip.
    #[arg(long, env = "VECRIG_METRIC", default_value = "cosine")]
    pub metric: Metric,
    /// Default search breadth when a request sends ef = 0.
    #[arg(long, env = "VECRIG_EF_SEARCH", default_value_t = 64)]
    pub ef_search: usize,
    /// HNSW links per node (M).
    #[arg(long, env = "VECRIG_CONNECTIVITY", default_value_t = 16)]
    pub connectivity: usize,
    /// HNSW candidates explored per insert (ef_construction).
    #[arg(long, env = "VECRIG_EF_CONSTRUCTION", default_value_t = 128)]
    pub ef_construction: usize,
    /// Which HNSW implementation: graph (our own, `index::graph`), or usearch (only in a build
    /// with the `usearch` feature). A snapshot's graph written by the other one is refused and
    /// rebuilt from the points at start.
    #[arg(long, env = "VECRIG_ANN_ENGINE", default_value = "graph", hide = !cfg!(feature = "usearch"))]
    pub ann_engine: AnnEngine,
    /// Threads that move written points into the graph side by side (0: one per CPU this
    /// process may use). usearch takes one at a time whatever is set here.
    #[arg(long, env = "VECRIG_INDEX_THREADS", default_value_t = 0)]
    pub index_threads: usize,
}
