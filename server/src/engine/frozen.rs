//! The engine with writes held off, for taking a snapshot.

use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

use super::state::Engine;
use super::types::Shape;
use crate::error::Error;
use crate::index::Ann;
use crate::index::store::PointStore;

impl Engine {
    /// Holds off writes, the indexer (and snapshots) until the returned guard is dropped, so
    /// that what it shows is one consistent state: for taking a snapshot. Graph entries of
    /// deleted or replaced points are removed first, so the graph then holds exactly the
    /// stored points that are not in the tail, each with its stored vector.
    pub fn freeze(&self) -> Result<Frozen<'_>, Error> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let graph_writers = self
            .graph_writers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        self.remove_replaced()?;
        Ok(Frozen {
            engine: self,
            _writer: writer,
            _graph_writers: graph_writers,
        })
    }
}

/// The engine with writes held off (see [`Engine::freeze`]).
pub struct Frozen<'a> {
    engine: &'a Engine,
    _writer: MutexGuard<'a, ()>,
    _graph_writers: RwLockWriteGuard<'a, ()>,
}

impl Frozen<'_> {
    /// The sequence number of the last write applied.
    pub fn sequence(&self) -> u64 {
        self.engine.sequence()
    }

    /// Static facts about the index.
    pub fn shape(&self) -> Shape {
        self.engine.shape
    }

    /// The graph.
    pub fn ann(&self) -> &dyn Ann {
        self.engine.ann.as_ref()
    }

    /// The points (read-locked until the guard is dropped).
    pub fn store(&self) -> RwLockReadGuard<'_, PointStore> {
        self.engine.store.read().unwrap_or_else(|p| p.into_inner())
    }
}
