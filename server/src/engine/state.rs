//! The engine itself: one vector index's parts (points, graph, tail, embedder), the locks
//! around them, and what can be read of it without searching.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::Semaphore;
use vecrig::embed::{Embedder, HashingEmbedder};

use super::types::Shape;
use crate::error::Error;
use crate::index::store::PointStore;
use crate::index::tail::Tail;
use crate::index::{Ann, HnswParams, IndexError};

/// Points the tail holds at most before writers wait for the indexer: a search scans at most
/// this many vectors besides the graph (about 0.5 ms at 128-d with the AVX2 kernels).
pub const TAIL_LIMIT: usize = 32_768;

/// One vector index and everything needed to serve it.
pub struct Engine {
    pub(super) shape: Shape,
    pub(super) default_ef: usize,
    pub(super) store: RwLock<PointStore>,
    pub(super) ann: Box<dyn Ann>,
    pub(super) embedder: Box<dyn Embedder>,
    /// Held while a write is applied or a snapshot taken: one at a time, in sequence order.
    pub(super) writer: Mutex<()>,
    /// Written points the graph has not taken yet (see `index::tail`).
    pub(super) tail: RwLock<Tail>,
    /// Held shared by each indexer's insert, alone by removals and snapshots: inserts of
    /// distinct ids run side by side (the `Ann` contract), the rest alone.
    pub(super) graph_writers: RwLock<()>,
    /// Signalled when the tail gains work (wakes the indexer) or room (wakes the writer).
    pub(super) tail_changed: Condvar,
    pub(super) tail_signal: Mutex<()>,
    pub(super) tail_limit: usize,
    pub(super) search_permits: Arc<Semaphore>,
    pub(super) sequence: AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shape", &self.shape)
            .field("points", &self.len())
            .field("sequence", &self.sequence())
            .finish()
    }
}

impl Engine {
    /// An empty engine (nothing on disk).
    pub fn new(shape: Shape, hnsw: HnswParams, default_ef: usize) -> Result<Self, IndexError> {
        let ann = crate::index::open::create(hnsw.engine, shape.dimensions, shape.metric, hnsw)?;
        Ok(Self::from_parts(
            shape,
            default_ef,
            PointStore::new(shape.dimensions, shape.metric),
            ann,
            0,
        ))
    }

    /// An engine over an existing store and graph (loaded from a snapshot) at `sequence`.
    /// Points of the store that the graph lacks go to the tail, for the indexer; the graph
    /// must hold no point the store lacks (a snapshot's graph never does, see `freeze`).
    pub fn from_parts(
        shape: Shape,
        default_ef: usize,
        store: PointStore,
        ann: Box<dyn Ann>,
        sequence: u64,
    ) -> Self {
        let permits = ann.search_threads();
        let mut tail = Tail::new(shape.dimensions, shape.metric);
        if ann.len() < store.len() {
            for (id, vector, _) in store.iter() {
                if !ann.contains(id) {
                    tail.upsert(id, vector, false);
                }
            }
        }
        Self {
            shape,
            default_ef: default_ef.max(1),
            store: RwLock::new(store),
            ann,
            embedder: Box::new(HashingEmbedder::new(shape.dimensions)),
            writer: Mutex::new(()),
            tail: RwLock::new(tail),
            graph_writers: RwLock::new(()),
            tail_changed: Condvar::new(),
            tail_signal: Mutex::new(()),
            tail_limit: TAIL_LIMIT,
            search_permits: Arc::new(Semaphore::new(permits)),
            sequence: AtomicU64::new(sequence),
        }
    }

    /// The same engine with another tail limit (tests use small ones).
    pub fn with_tail_limit(mut self, limit: usize) -> Self {
        self.tail_limit = limit.max(1);
        self
    }

    pub(super) fn tail_write(&self) -> Result<RwLockWriteGuard<'_, Tail>, Error> {
        self.tail
            .write()
            .map_err(|_| Error::Worker("tail lock poisoned".into()))
    }

    pub(super) fn tail_read(&self) -> Result<RwLockReadGuard<'_, Tail>, Error> {
        self.tail
            .read()
            .map_err(|_| Error::Worker("tail lock poisoned".into()))
    }

    pub(super) fn store_read(&self) -> Result<RwLockReadGuard<'_, PointStore>, Error> {
        self.store
            .read()
            .map_err(|_| Error::Worker("point store lock poisoned".into()))
    }

    /// Points written but not yet in the graph (searched exactly until they are).
    pub fn tail_len(&self) -> usize {
        self.tail.read().map(|t| t.len()).unwrap_or(0)
    }

    pub(super) fn signal_tail(&self) {
        let _signal = self.tail_signal.lock().unwrap_or_else(|p| p.into_inner());
        self.tail_changed.notify_all();
    }

    /// Static facts about the index.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The `ef` of a search that asks for none.
    pub fn default_ef(&self) -> usize {
        self.default_ef
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.store.read().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether the index holds no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence number of the last applied write.
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Acquire)
    }

    /// The embedder used for texts.
    pub fn embedder(&self) -> &dyn Embedder {
        self.embedder.as_ref()
    }
}
