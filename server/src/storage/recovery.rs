//! Start-up: what opening needs ([`Options`]), how it fails ([`OpenError`]), and the engine
//! rebuilt from the newest snapshot (the log is replayed after it by [`super::Storage::open`]).
//!
//! A snapshot's graph may lack points that were still in the tail when it was taken; those go
//! back to the tail (see `Engine::from_parts`) and the indexer takes them after start, so a
//! restart does not wait for graph inserts.

use std::path::PathBuf;

use super::snapshot::{self, SnapshotError};
use super::wal::WalError;
use crate::engine::{Engine, Shape};
use crate::error::Error;
use crate::index::hnsw::{HnswParams, UsearchAnn};
use crate::index::{Ann, IndexError};

/// What [`Storage::open`] needs: where, the index's shape and parameters, and what to preload.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory holding the index's files.
    pub data_dir: PathBuf,
    /// Vector width and metric.
    pub shape: Shape,
    /// HNSW graph parameters.
    pub hnsw: HnswParams,
    /// Default search breadth.
    pub ef_search: usize,
    /// Synthetic points to preload into an empty index.
    pub preload: u64,
    /// Seed of the synthetic data.
    pub preload_seed: u64,
}

/// Failure to open the data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The snapshot could not be used.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The index could not be built.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The write-ahead log could not be opened.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Replaying the log (or preloading) failed.
    #[error("cannot apply logged writes: {0}")]
    Replay(Error),
    /// Another server holds the data directory.
    #[error("data directory {path} is in use by another vecrig-server (its LOCK is held)")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the engine on `options.data_dir`: loads the newest snapshot if there is one,
/// rebuilding the graph from the points when its file is missing or does not match.
/// Blocking: call it from a blocking context.
pub fn open_engine(options: &Options) -> Result<Engine, OpenError> {
    let dir = &options.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| OpenError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let shape = options.shape;
    let Some(loaded) = snapshot::read_points(dir, shape.dimensions, shape.metric)? else {
        return Ok(Engine::new(shape, options.hnsw, options.ef_search)?);
    };
    let graph = loaded.graph.as_deref().and_then(|path| {
        match UsearchAnn::load(path, shape.dimensions, shape.metric, options.hnsw) {
            // Every graph entry must be a stored point (the snapshot froze the engine with its
            // removals applied); stored points the graph lacks are the tail's.
            Ok(ann)
                if ann.len() <= loaded.store.len()
                    && loaded
                        .store
                        .iter()
                        .filter(|(id, _, _)| ann.contains(*id))
                        .count()
                        == ann.len() =>
            {
                Some(ann)
            }
            Ok(ann) => {
                tracing::warn!(
                    graph = ann.len(),
                    points = loaded.store.len(),
                    "graph file does not match the points; rebuilding it"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "graph file unusable; rebuilding it");
                None
            }
        }
    });
    let ann = match graph {
        Some(ann) => ann,
        None => {
            let ann = UsearchAnn::new(shape.dimensions, shape.metric, options.hnsw)?;
            for (id, vector, _) in loaded.store.iter() {
                ann.insert(id, vector)?;
            }
            ann
        }
    };
    tracing::info!(
        points = loaded.store.len(),
        sequence = loaded.sequence,
        "loaded snapshot"
    );
    Ok(Engine::from_parts(
        shape,
        options.ef_search,
        loaded.store,
        Box::new(ann),
        loaded.sequence,
    ))
}
