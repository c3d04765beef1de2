//! Start-up: what opening needs ([`Options`]), how it fails ([`OpenError`]), and the engine
//! rebuilt from the newest snapshot (the log is replayed after it by [`super::Storage::open`]).
//!
//! The graph file is loaded by the engine the server runs (`--ann-engine`); one written by the
//! other engine is refused by name and the graph rebuilt from the points, as for a damaged one.
//!
//! A snapshot's graph may lack points that were still in the tail when it was taken; those go
//! back to the tail (see `Engine::from_parts`) and the indexer takes them after start, so a
//! restart does not wait for graph inserts.

use std::path::PathBuf;

use super::snapshot::{self, SnapshotError};
use super::wal::WalError;
use crate::engine::{Engine, Shape};
use crate::error::Error;
use crate::index::{HnswParams, IndexError};

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
    /// A dataset file whose train points fill an empty index, instead of synthetic ones.
    pub preload_from: Option<PathBuf>,
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
    /// The dataset to preload is missing, malformed, or does not fit the index.
    #[error("--preload-from: {0}")]
    Dataset(#[from] vecrig::dataset::Error),
    /// Preloading failed.
    #[error("cannot preload: {0}")]
    Preload(#[from] crate::engine::PreloadError),
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
        let engine = options.hnsw.engine;
        match crate::index::open::load(engine, path, shape.dimensions, shape.metric, options.hnsw) {
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
            let ann = crate::index::open::create(
                options.hnsw.engine,
                shape.dimensions,
                shape.metric,
                options.hnsw,
            )?;
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
        ann,
        loaded.sequence,
    ))
}

/// Opens the dataset at `path` and checks it fits an index of `shape`: its width, and its
/// metric where the file names one.
pub fn open_dataset(
    path: &std::path::Path,
    shape: Shape,
) -> Result<vecrig::dataset::Dataset, OpenError> {
    use vecrig::dataset::{self, Dataset, Problem, Sources};
    let sources = Sources {
        dataset: Some(path.to_path_buf()),
        ..Sources::default()
    };
    let opened = Dataset::open(&sources)?;
    opened.check_dimensions(&sources, shape.dimensions)?;
    let same = match opened.metric {
        None => true,
        Some(dataset::Metric::L2) => shape.metric == crate::index::Metric::L2,
        Some(dataset::Metric::Cosine) => shape.metric == crate::index::Metric::Cosine,
        Some(dataset::Metric::Ip) => shape.metric == crate::index::Metric::Ip,
    };
    if !same {
        return Err(dataset::Error::new(
            path,
            Problem::Corrupt(format!(
                "its distance is {}, the index's metric {:?} (set --metric)",
                opened.metric.map_or("", |m| m.name()),
                shape.metric
            )),
        )
        .into());
    }
    if !opened.has_points() {
        return Err(dataset::Error::new(path, Problem::Missing("train points")).into());
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Query, Search};
    use crate::index::graph::is_graph_file;
    use crate::index::{AnnEngine, Metric};
    use crate::storage::{SnapshotPolicy, Storage};

    /// A snapshot's graph written by one engine, opened by the other: refused (never handed
    /// to the other's loader) and rebuilt from the points, which are all found again.
    #[cfg(feature = "usearch")]
    #[test]
    fn a_graph_file_of_the_other_engine_is_rebuilt_from_the_points() {
        for (first, second) in [
            (AnnEngine::Usearch, AnnEngine::Graph),
            (AnnEngine::Graph, AnnEngine::Usearch),
            (AnnEngine::Graph, AnnEngine::Graph),
        ] {
            reopen(first, second, None);
        }
    }

    /// A snapshot's graph file that is not ours (usearch's, which a build without usearch
    /// cannot read, or a damaged one): refused by name and rebuilt from the points.
    #[test]
    fn a_graph_file_not_of_ours_is_rebuilt_from_the_points() {
        reopen(
            AnnEngine::Graph,
            AnnEngine::Graph,
            Some(b"usearch, probably"),
        );
    }

    /// Writes a snapshot of 300 points with `first`, replaces its graph file by `foreign`
    /// bytes if given, and opens it with `second`: every point is found again.
    fn reopen(first: AnnEngine, second: AnnEngine, foreign: Option<&[u8]>) {
        let shape = Shape {
            dimensions: 8,
            metric: Metric::Cosine,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let options = |engine| Options {
            data_dir: dir.path().to_path_buf(),
            shape,
            hnsw: HnswParams {
                engine,
                ..HnswParams::default()
            },
            ef_search: 64,
            preload: 300,
            preload_seed: 1,
            preload_from: None,
        };
        let storage = Storage::open(options(first), SnapshotPolicy::default()).expect("open");
        storage.close().expect("close");
        drop(storage);
        let graph = snapshot::read_points(dir.path(), 8, Metric::Cosine)
            .expect("snapshot")
            .and_then(|s| s.graph)
            .expect("a graph file");
        assert_eq!(
            is_graph_file(&graph).expect("read"),
            first == AnnEngine::Graph
        );
        if let Some(bytes) = foreign {
            std::fs::write(&graph, bytes).expect("replace the graph file");
        }
        let load = || {
            crate::index::open::load(second, &graph, 8, Metric::Cosine, HnswParams::default())
                .err()
                .expect("refused")
        };
        if foreign.is_some() {
            let err = load();
            assert!(err.to_string().contains("not written by"), "{err}");
        } else if first != second {
            let err = load();
            assert!(err.to_string().contains(first.as_str()), "{err}");
        }

        let engine = open_engine(&options(second)).expect("reopen");
        assert_eq!(engine.len(), 300, "{first} -> {second}");
        assert_eq!(engine.freeze().expect("freeze").ann().len(), 300);
        for id in 0..300 {
            let vector = engine.get(id).expect("stored").vector;
            let hits = engine
                .search_blocking(&Search {
                    query: Query::Vector(vector),
                    k: 1,
                    ef: Some(64),
                    exact: false,
                    with_payload: false,
                })
                .expect("search");
            assert_eq!(hits[0].id, id, "{first} -> {second}");
        }
    }
}
