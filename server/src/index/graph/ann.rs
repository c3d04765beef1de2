//! [`GraphAnn`]: the graph behind the [`Ann`] trait, with its locks, the scratch pool, and
//! inserts planned side by side and applied in step.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::file;
use super::insert::{InsertPlan, LEVEL_SEED, PENDING, random_level};
use super::nodes::{Graph, MAX_CONNECTIVITY, NONE};
use super::scratch::Scratch;
use crate::index::distance::unit;
use crate::index::{Ann, HnswParams, IndexError, Metric, Neighbor};

/// Our HNSW graph; see the module docs.
pub struct GraphAnn {
    pub(super) graph: RwLock<Graph>,
    /// Held for a whole insert or remove: shared by inserts that may run beside each other,
    /// alone by the rest (see [`GraphAnn::insert`]).
    writers: RwLock<()>,
    /// The level generator.
    levels: Mutex<SmallRng>,
    /// Plans made and waiting for the write lock (see [`GraphAnn::apply_in_step`]).
    applying: AtomicUsize,
    scratch: Mutex<Vec<Scratch>>,
    dimensions: usize,
    metric: Metric,
    search_threads: usize,
    insert_threads: usize,
}

impl std::fmt::Debug for GraphAnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphAnn")
            .field("dimensions", &self.dimensions)
            .field("metric", &self.metric)
            .field("search_threads", &self.search_threads)
            .field("insert_threads", &self.insert_threads)
            .field("len", &self.len())
            .finish()
    }
}

fn poisoned() -> IndexError {
    IndexError::Ann("graph lock poisoned by an earlier panic".into())
}

impl GraphAnn {
    /// An empty graph.
    pub fn new(dimensions: usize, metric: Metric, params: HnswParams) -> Result<Self, IndexError> {
        if dimensions == 0 {
            return Err(IndexError::Ann(
                "a graph needs at least one dimension".into(),
            ));
        }
        if params.connectivity < 2 || params.connectivity > MAX_CONNECTIVITY {
            return Err(IndexError::Ann(format!(
                "connectivity {} out of range 2..={MAX_CONNECTIVITY}",
                params.connectivity
            )));
        }
        let graph = Graph::new(
            dimensions,
            metric,
            params.connectivity,
            params.ef_construction.max(1),
        );
        Ok(Self::from_graph(graph, params))
    }

    pub(super) fn from_graph(graph: Graph, params: HnswParams) -> Self {
        Self {
            dimensions: graph.dimensions,
            metric: graph.metric,
            graph: RwLock::new(graph),
            writers: RwLock::new(()),
            levels: Mutex::new(SmallRng::seed_from_u64(LEVEL_SEED)),
            applying: AtomicUsize::new(0),
            scratch: Mutex::new(Vec::new()),
            search_threads: params.search_threads.max(1),
            insert_threads: params.insert_threads.max(1),
        }
    }

    /// Rows holding removed or replaced vectors, still in the graph.
    pub fn tombstones(&self) -> usize {
        self.graph.read().map(|g| g.tombstones).unwrap_or(0)
    }

    /// Rows in the graph, live and tombstoned.
    #[cfg(test)]
    pub(super) fn rows(&self) -> usize {
        self.graph.read().map(|g| g.ids.len()).unwrap_or(0)
    }

    fn take_scratch(&self) -> Scratch {
        self.scratch
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default()
    }

    fn return_scratch(&self, scratch: Scratch) {
        if let Ok(mut pool) = self.scratch.lock() {
            pool.push(scratch);
        }
    }

    /// Before a plan: waits while other plans wait for the write lock, so that this plan's
    /// read lock does not hold them up for its whole length. Planners so move in step (plan
    /// side by side, then apply one after the other) instead of each apply waiting for
    /// another whole plan. Why: a thread that sleeps on the lock can be woken late (its CPU
    /// idles and must be woken, notably on a VM), another thread takes the lock meanwhile,
    /// and two writers would build no faster than one. Bounded: after
    /// [`APPLY_WAIT`] it plans anyway.
    fn wait_for_applies(&self) {
        let started = Instant::now();
        while self.applying.load(AtomicOrdering::Acquire) > 0 && started.elapsed() < APPLY_WAIT {
            std::thread::yield_now();
        }
    }

    /// Applies `plan` under the write lock, counted in `applying` meanwhile; the lock is tried
    /// without sleeping for up to [`APPLY_WAIT`], then waited for.
    fn apply_in_step(&self, plan: InsertPlan) -> Result<(), IndexError> {
        self.applying.fetch_add(1, AtomicOrdering::AcqRel);
        let applied = self.write_soon().map(|mut graph| graph.apply(plan));
        self.applying.fetch_sub(1, AtomicOrdering::Release);
        applied
    }

    fn write_soon(&self) -> Result<RwLockWriteGuard<'_, Graph>, IndexError> {
        let started = Instant::now();
        while started.elapsed() < APPLY_WAIT {
            match self.graph.try_write() {
                Ok(graph) => return Ok(graph),
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(poisoned()),
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
        self.graph.write().map_err(|_| poisoned())
    }

    fn check_width(&self, vector: &[f32]) -> Result<(), IndexError> {
        if vector.len() == self.dimensions {
            Ok(())
        } else {
            Err(IndexError::Ann(format!(
                "vector has {} dimensions, the graph {}",
                vector.len(),
                self.dimensions
            )))
        }
    }

    /// Loads a graph written by [`Ann::save`]. The file must have been written for the same
    /// `dimensions` and `metric`; its own `M` and `ef_construction` are kept (the links were
    /// made with them), `params.search_threads` and `insert_threads` are taken from the caller.
    pub fn load(
        path: &Path,
        dimensions: usize,
        metric: Metric,
        params: HnswParams,
    ) -> Result<Self, IndexError> {
        let bytes = std::fs::read(path).map_err(|source| IndexError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let graph = file::decode(&bytes, dimensions, metric)
            .map_err(|e| IndexError::Ann(format!("graph file {}: {e}", path.display())))?;
        Ok(Self::from_graph(graph, params))
    }
}

/// How long a planner waits for others' applies, or for the write lock, before it sleeps on
/// the lock (see [`GraphAnn::wait_for_applies`]): a few plans' length.
const APPLY_WAIT: Duration = Duration::from_millis(2);

impl Ann for GraphAnn {
    /// Inserts of distinct ids may run side by side (up to [`Ann::insert_threads`]): each
    /// plans under the graph's read lock, beside searches and the other inserts, and applies
    /// its plan under the write lock (see [`Graph::apply`] for how plans made side by side
    /// are reconciled). An insert runs alone when it changes what the others' plans rely on:
    /// the first node, a node above the top level (the entry point moves), or one that takes a
    /// tombstoned row (its old neighbourhood is repaired from lists nobody else may change).
    fn insert(&self, id: u64, vector: &[f32]) -> Result<(), IndexError> {
        self.check_width(vector)?;
        let vector = if self.metric == Metric::Cosine {
            unit(vector).into_owned()
        } else {
            vector.to_vec()
        };
        let (level, alone) = {
            let mut levels = self.levels.lock().map_err(|_| poisoned())?;
            let graph = self.graph.read().map_err(|_| poisoned())?;
            let level = random_level(&mut levels, graph.m);
            let alone = graph.entry == NONE || level > graph.max_level || !graph.free.is_empty();
            (level, alone)
        };
        // Only one of these is taken; either is held until the plan is applied.
        let _shared;
        let _alone;
        if alone {
            _alone = self.writers.write().map_err(|_| poisoned())?;
        } else {
            _shared = self.writers.read().map_err(|_| poisoned())?;
        }
        let mut scratch = self.take_scratch();
        self.wait_for_applies();
        let plan = {
            let graph = self.graph.read().map_err(|_| poisoned())?;
            if graph.free.is_empty() && graph.ids.len() >= PENDING as usize {
                return Err(IndexError::Ann("graph is full (2^32 - 2 slots)".into()));
            }
            // Side by side, a row freed meanwhile is left for an insert that runs alone.
            let reuse = if alone {
                graph.free.last().copied()
            } else {
                None
            };
            graph.plan_insert(id, vector, level, reuse, &mut scratch)
        };
        self.return_scratch(scratch);
        self.apply_in_step(plan)
    }

    fn remove(&self, id: u64) -> Result<(), IndexError> {
        let _alone = self.writers.write().map_err(|_| poisoned())?;
        let mut graph = self.graph.write().map_err(|_| poisoned())?;
        if let Some(row) = graph.rows.remove(&id) {
            graph.tombstone(row);
        }
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbor>, IndexError> {
        self.check_width(query)?;
        let normalized;
        let query = if self.metric == Metric::Cosine {
            normalized = unit(query);
            &normalized[..]
        } else {
            query
        };
        let mut scratch = self.take_scratch();
        let found = {
            let graph = self.graph.read().map_err(|_| poisoned())?;
            graph.search(query, k, ef, &mut scratch)
        };
        self.return_scratch(scratch);
        Ok(found)
    }

    fn contains(&self, id: u64) -> bool {
        self.graph
            .read()
            .map(|g| g.rows.contains_key(&id))
            .unwrap_or(false)
    }

    fn len(&self) -> usize {
        self.graph.read().map(|g| g.rows.len()).unwrap_or(0)
    }

    fn search_threads(&self) -> usize {
        self.search_threads
    }

    fn insert_threads(&self) -> usize {
        self.insert_threads
    }

    fn save(&self, path: &Path) -> Result<(), IndexError> {
        let bytes = {
            let graph = self.graph.read().map_err(|_| poisoned())?;
            file::encode(&graph)
        };
        std::fs::write(path, bytes).map_err(|source| IndexError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}
