//! The engine: one vector index (points, HNSW graph, embedder) and the rules for using it from
//! async code.
//!
//! Index work is CPU-bound and synchronous, so every search and write runs on tokio's blocking
//! pool, never on the threads that drive the network, except on threads that exist for admitted
//! work alone ([`run_searches_inline_on_this_thread`]), where an approximate search runs in
//! place. Searches first take one of a fixed number of *search slots* (the ANN index's thread
//! slots). Writes arrive as logged [`Record`]s and are
//! applied one at a time in sequence order (see `storage`) to the point store and the
//! [`Tail`] together, which makes them searchable at once; the graph takes them from the tail in
//! the background, on indexer threads ([`Engine::run_indexer`], one per CPU where the graph
//! takes inserts side by side, see `--index-threads`), which are the only writers of the graph
//! (the `Ann` contract). A search scans the tail exactly and merges it with the graph's
//! answer, dropping graph hits whose point is gone or newer in the tail.
//!
//! Lock order: `writer`, then `graph_writers`, then `store`, then `tail`; each indexer holds
//! `graph_writers` (shared) for one point at a time, and removals and a snapshot
//! ([`Engine::freeze`]) hold it alone, so a snapshot waits for at most one insert per indexer.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::Error;
use crate::index::store::{Payload, PointStore, StoredPoint};
use crate::index::tail::{self, Tail};
use crate::index::{Ann, AnnEngine, HnswParams, IndexError, Metric, Neighbor};
use vecrig::embed::{Embedder, HashingEmbedder};

thread_local! {
    /// Whether this thread runs approximate searches in place ([`Engine::search`]).
    static SEARCHES_INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that runs approximate searches in place rather than
/// handing them to the blocking pool: a worker of the runtime of admitted work, whose tasks
/// are searches and the steps around them (`admission::work`).
///
/// Why: a hand-off to the blocking pool and back is two thread switches per search, on top
/// of the two between the request path and the work runtime. On a server pinned to one CPU,
/// measured with a closed-loop flood of 16 outstanding k=10, ef=512 searches over 20,000
/// points of 64 dimensions, that was 5.5 context switches per search, and the request path
/// cost 146 us of CPU per answer against some 240 us of index work. In place, a worker runs a
/// search, releases its slot and starts the next admitted one without leaving the CPU.
/// Exact scans still go to the pool: they can take long enough to hold up the runtime's other
/// admitted requests (the start of the next granted one, the release of slots).
///
/// Every approximate search on such a thread runs in place: that runtime holds admitted work
/// only (requests wait for their turn in admission's fair queue, and are started on it when
/// granted: `admission::Launch`), so a search in place holds up no request that is still to
/// take its place in the fair queue. (Before that was so, requests handed over by the request
/// path waited in the runtime's shared queue to be polled into the fair queue, and a search
/// in place had to go to the pool whenever one did: under an open-model flood the polite
/// tenant's requests waited there in arrival order, p99 5.8-12.4 s; `docs/degradation.md`.)
///
/// A search in place runs at the worker's priority, not index work's (`--index-nice`): the
/// worker must keep its own for the steps around every request (starting the next granted
/// request, releasing slots). Lowered, it let the request path crowd out those steps: with
/// pacing off, a 64 x 64 flood left 0.05 of capacity instead of 0.33.
pub fn run_searches_inline_on_this_thread() {
    SEARCHES_INLINE.with(|inline| inline.set(true));
}

/// Points the tail holds at most before writers wait for the indexer: a search scans at most
/// this many vectors besides the graph (about 0.5 ms at 128-d with the AVX2 kernels).
pub const TAIL_LIMIT: usize = 32_768;

/// Graph hits asked for beyond `k` to make up for hits the tail shadows, at most.
const MAX_OVERFETCH: usize = 1024;

/// The index's flags (flattened into the server's); their defaults are written here only.
#[derive(Debug, Clone, clap::Args)]
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
    #[arg(long, env = "VECRIG_ANN_ENGINE", default_value = "graph")]
    pub ann_engine: AnnEngine,
    /// Threads that move written points into the graph side by side (0: one per CPU this
    /// process may use). usearch takes one at a time whatever is set here.
    #[arg(long, env = "VECRIG_INDEX_THREADS", default_value_t = 0)]
    pub index_threads: usize,
}

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
    /// [`run_searches_inline_on_this_thread`]) rather than on the blocking pool.
    fn runs_in_place(&self) -> bool {
        !self.exact && SEARCHES_INLINE.with(Cell::get)
    }

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

/// One vector index and everything needed to serve it.
pub struct Engine {
    shape: Shape,
    default_ef: usize,
    store: RwLock<PointStore>,
    ann: Box<dyn Ann>,
    embedder: Box<dyn Embedder>,
    /// Held while a write is applied or a snapshot taken: one at a time, in sequence order.
    writer: Mutex<()>,
    /// Written points the graph has not taken yet (see `index::tail`).
    tail: RwLock<Tail>,
    /// Held shared by each indexer's insert, alone by removals and snapshots: inserts of
    /// distinct ids run side by side (the `Ann` contract), the rest alone.
    graph_writers: RwLock<()>,
    /// Signalled when the tail gains work (wakes the indexer) or room (wakes the writer).
    tail_changed: Condvar,
    tail_signal: Mutex<()>,
    tail_limit: usize,
    search_slots: Arc<Semaphore>,
    sequence: AtomicU64,
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
        let slots = ann.search_threads();
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
            search_slots: Arc::new(Semaphore::new(slots)),
            sequence: AtomicU64::new(sequence),
        }
    }

    /// The same engine with another tail limit (tests use small ones).
    pub fn with_tail_limit(mut self, limit: usize) -> Self {
        self.tail_limit = limit.max(1);
        self
    }

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

    fn tail_write(&self) -> Result<RwLockWriteGuard<'_, Tail>, Error> {
        self.tail
            .write()
            .map_err(|_| Error::Worker("tail lock poisoned".into()))
    }

    fn tail_read(&self) -> Result<RwLockReadGuard<'_, Tail>, Error> {
        self.tail
            .read()
            .map_err(|_| Error::Worker("tail lock poisoned".into()))
    }

    fn store_read(&self) -> Result<RwLockReadGuard<'_, PointStore>, Error> {
        self.store
            .read()
            .map_err(|_| Error::Worker("point store lock poisoned".into()))
    }

    /// Points written but not yet in the graph (searched exactly until they are).
    pub fn tail_len(&self) -> usize {
        self.tail.read().map(|t| t.len()).unwrap_or(0)
    }

    /// Blocks while the tail is full, until the indexer makes room or `stop` is set. The
    /// storage writer calls it before applying an upsert, so writers wait instead of the
    /// tail (and every search's scan of it) growing without bound.
    pub fn wait_for_room(&self, stop: &AtomicBool) {
        let mut signal = self.tail_signal.lock().unwrap_or_else(|p| p.into_inner());
        while self.tail_len() >= self.tail_limit && !stop.load(Ordering::Acquire) {
            // Timed: a signal sent between the check and the wait is not lost for long.
            signal = self
                .tail_changed
                .wait_timeout(signal, Duration::from_millis(10))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn signal_tail(&self) {
        let _signal = self.tail_signal.lock().unwrap_or_else(|p| p.into_inner());
        self.tail_changed.notify_all();
    }

    /// Moves one point from the tail into the graph, or removes the graph entries of deleted
    /// and replaced points (first, and alone: no insert runs beside a removal, so a removal
    /// never meets the newer write of its id); returns whether there was anything to do.
    /// Up to [`Engine::indexers`] threads may call it at once, each inserting a distinct id.
    pub fn index_step(&self) -> Result<bool, Error> {
        if self.tail_read()?.removals() > 0 {
            let _alone = self
                .graph_writers
                .write()
                .unwrap_or_else(|p| p.into_inner());
            return Ok(self.remove_replaced()? > 0);
        }
        let _shared = self.graph_writers.read().unwrap_or_else(|p| p.into_inner());
        let next = {
            let mut tail = self.tail_write()?;
            if tail.removals() > 0 {
                // Arrived since the check above: removed first, on the next step.
                return Ok(true);
            }
            tail.take_oldest()
        };
        let Some(pending) = next else {
            return Ok(false);
        };
        // Inserted before it leaves the tail: a search that no longer finds it in the tail
        // finds it in the graph.
        if let Err(e) = self.ann.insert(pending.id, &pending.vector) {
            self.tail_write()?.give_back(&pending);
            return Err(e.into());
        }
        if !self.tail_write()?.indexed(&pending) {
            // Replaced or deleted while it was inserted: the graph must not keep this vector.
            // Its id stays taken until then, so no other indexer inserts the newer write first.
            let removed = self.ann.remove(pending.id);
            self.tail_write()?.released(&pending);
            removed?;
        }
        self.signal_tail();
        Ok(true)
    }

    /// Removes the graph entries of deleted and replaced points; returns how many. The caller
    /// holds `graph_writers` alone.
    fn remove_replaced(&self) -> Result<usize, Error> {
        let removals = self.tail_write()?.take_removals();
        for &id in &removals {
            self.ann.remove(id)?;
        }
        Ok(removals.len())
    }

    /// How many indexer threads may run [`Engine::run_indexer`] at once: the graph's insert
    /// threads (one for usearch).
    pub fn indexers(&self) -> usize {
        self.ann.insert_threads().max(1)
    }

    /// Indexes everything in the tail now, on this thread and [`Engine::indexers`] - 1 more
    /// (preload and tests); returns once the tail is empty.
    pub fn index_all(&self) -> Result<(), Error> {
        let drain = || -> Result<(), Error> {
            while self.index_step()? {}
            Ok(())
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..self.indexers()).map(|_| scope.spawn(drain)).collect();
            let mine = drain();
            helpers
                .into_iter()
                .map(|helper| {
                    helper.join().unwrap_or_else(|_| {
                        Err(Error::Worker("an indexing thread panicked".into()))
                    })
                })
                .chain(std::iter::once(mine))
                .collect()
        })
    }

    /// The indexer: moves points from the tail into the graph until `stop` is set. Runs on
    /// its own thread (started by `storage`); a failed insert is logged and retried later,
    /// the point staying searchable in the tail meanwhile.
    pub fn run_indexer(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let step = {
                let _work = crate::cpu::IndexWork::begin();
                self.index_step()
            };
            match step {
                Ok(true) => {}
                Ok(false) => {
                    let signal = self.tail_signal.lock().unwrap_or_else(|p| p.into_inner());
                    // Points other indexers are inserting are not this one's work.
                    let idle = self
                        .tail
                        .read()
                        .map(|t| !t.has_queued() && t.removals() == 0);
                    if idle.unwrap_or(true) && !stop.load(Ordering::Acquire) {
                        let _ = self
                            .tail_changed
                            .wait_timeout(signal, Duration::from_millis(50));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "indexing a point failed; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
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

    /// One point by id.
    pub fn get(&self, id: u64) -> Result<StoredPoint, Error> {
        self.store
            .read()
            .map_err(|_| Error::Worker("point store lock poisoned".into()))?
            .get(id)
            .ok_or(Error::NotFound { id })
    }

    /// Runs a search within the search-slot limit: on the blocking pool, or in place on a
    /// thread marked by [`run_searches_inline_on_this_thread`] (approximate searches only).
    pub async fn search(self: &Arc<Self>, search: Search) -> Result<Vec<Hit>, Error> {
        let permit = self
            .search_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        if search.runs_in_place() {
            let _permit = permit;
            let _work = crate::cpu::IndexWork::in_place();
            return self.search_blocking(&search);
        }
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _work = crate::cpu::IndexWork::begin();
            engine.search_blocking(&search)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))?
    }

    /// A search, synchronously. The caller must respect the search-slot limit
    /// ([`Engine::search`] does).
    pub fn search_blocking(&self, search: &Search) -> Result<Vec<Hit>, Error> {
        let embedded;
        let query: &[f32] = match &search.query {
            Query::Vector(v) => v,
            Query::Text(t) => {
                embedded = self.embedder.embed(t);
                &embedded
            }
        };
        let neighbors: Vec<Neighbor> = if search.exact {
            self.store_read()?.exact_search(query, search.k)
        } else {
            let ef = search.ef.unwrap_or(self.default_ef);
            self.approximate(query, search.k, ef)?
        };
        let store = self.store_read()?;
        Ok(neighbors
            .into_iter()
            // A point deleted while this search ran may still be in an answer.
            .filter(|n| store.contains(n.id))
            .map(|n| Hit {
                id: n.id,
                distance: n.distance,
                payload: search
                    .with_payload
                    .then(|| store.payload(n.id).cloned().unwrap_or_default()),
            })
            .collect())
    }

    /// The graph's answer merged with an exact scan of the tail. The tail is read first: a
    /// point that leaves it afterwards was put in the graph before it left.
    fn approximate(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbor>, Error> {
        let (from_tail, shadowed) = {
            let tail = self.tail_read()?;
            let hits = if tail.is_empty() {
                Vec::new()
            } else {
                tail.exact_search(query, k)
            };
            // Graph entries the tail shadows are the ones waiting for removal.
            (hits, tail.removals())
        };
        let from_graph = self
            .ann
            .search(query, k + shadowed.min(MAX_OVERFETCH), ef)?;
        let from_graph = {
            let store = self.store_read()?;
            let tail = self.tail_read()?;
            from_graph
                .into_iter()
                .filter(|n| store.contains(n.id) && !tail.shadows(n.id))
                .collect()
        };
        Ok(tail::merge(from_graph, from_tail, k))
    }

    /// Turns validated points into what the log records: text embedded, vectors as indexed.
    /// Blocking (embedding long texts costs real CPU): call it from a blocking context.
    pub fn prepare(&self, points: Vec<NewPoint>) -> Record {
        Record::Upsert(
            points
                .into_iter()
                .map(|p| {
                    let vector = match p.data {
                        PointData::Vector(v) => v,
                        PointData::Text(t) => self.embedder.embed(&t),
                    };
                    (p.id, vector, p.payload)
                })
                .collect(),
        )
    }

    /// Applies one logged write at `sequence`; returns how many points it touched (for a
    /// delete: how many of its ids existed). Writes must be applied in sequence order, by one
    /// writer at a time (the storage writer, or recovery).
    pub fn apply(&self, sequence: u64, record: &Record) -> Result<usize, Error> {
        // Requests are validated, so only a log written under other `--dimensions` (a crash
        // before any snapshot, then a restart with a new width) gets here with another width:
        // refuse the record whole, before touching the index, instead of panicking in the store.
        if let Record::Upsert(points) = record
            && let Some((id, vector, _)) = points
                .iter()
                .find(|(_, vector, _)| vector.len() != self.shape.dimensions)
        {
            return Err(Error::invalid(
                format!("point {id}"),
                format!(
                    "has {} values, the index has {} dimensions",
                    vector.len(),
                    self.shape.dimensions
                ),
            ));
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let touched = {
            // Store and tail change under both locks, so a search sees a point in both or in
            // neither. The graph is left to the indexer.
            let mut store = self
                .store
                .write()
                .map_err(|_| Error::Worker("point store lock poisoned".into()))?;
            let mut tail = self.tail_write()?;
            match record {
                Record::Upsert(points) => {
                    for (id, vector, payload) in points {
                        // Stored and not in the tail: the graph holds its older vector.
                        let in_graph = store.contains(*id) && !tail.contains(*id);
                        store.upsert(*id, vector, payload.clone());
                        tail.upsert(*id, vector, in_graph);
                    }
                    points.len()
                }
                Record::Delete(ids) => {
                    let mut deleted = 0;
                    for &id in ids {
                        if store.remove(id) {
                            let in_graph = !tail.contains(id);
                            tail.delete(id, in_graph);
                            deleted += 1;
                        }
                    }
                    deleted
                }
            }
        };
        self.signal_tail();
        self.sequence.fetch_max(sequence, Ordering::AcqRel);
        Ok(touched)
    }

    /// Fills the index with `count` synthetic points (ids `0..count`) from the seeded
    /// distribution shared with the loadgen, in batches, bypassing the log: the caller must
    /// snapshot afterwards. Blocking.
    pub fn preload(&self, count: u64, seed: u64) -> Result<(), Error> {
        let data = vecrig::synthetic::Synthetic::new(
            self.shape.dimensions,
            vecrig::synthetic::Synthetic::DEFAULT_CLUSTERS,
            seed,
        );
        let mut batch = Vec::with_capacity(1024);
        for id in 0..count {
            let p = data.point(id);
            batch.push((
                id,
                p.vector,
                Payload::from([
                    ("text".to_string(), p.text),
                    ("cluster".to_string(), p.cluster.to_string()),
                ]),
            ));
            if batch.len() == 1024 || id + 1 == count {
                // Not logged: the caller snapshots right after, which makes it durable.
                let sequence = self.sequence() + 1;
                self.apply(sequence, &Record::Upsert(std::mem::take(&mut batch)))?;
                self.index_all()?;
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Approximate searches run in place only on a marked thread; exact scans never do.
    #[test]
    fn searches_run_in_place_only_on_marked_threads() {
        let search = |exact| Search {
            query: Query::Vector(vec![0.0; 4]),
            k: 1,
            ef: None,
            exact,
            with_payload: false,
        };
        // A fresh thread, so that the mark does not stay on a thread other tests run on.
        std::thread::spawn(move || {
            assert!(!search(false).runs_in_place(), "an unmarked thread");
            run_searches_inline_on_this_thread();
            assert!(search(false).runs_in_place());
            assert!(!search(true).runs_in_place(), "an exact scan");
        })
        .join()
        .expect("the checks pass");
    }

    #[test]
    fn a_narrowed_search_keeps_at_least_k_and_leaves_exact_scans_whole() {
        let search = |k, ef, exact| Search {
            query: Query::Vector(vec![0.0; 3]),
            k,
            ef,
            exact,
            with_payload: false,
        };
        let ef_of = |s: Search| s.ef;
        assert_eq!(ef_of(search(10, None, false).narrowed(0.25, 64)), Some(16));
        assert_eq!(
            ef_of(search(10, Some(512), false).narrowed(0.5, 64)),
            Some(256)
        );
        // Rounded up, and never below k (fewer candidates than k would return fewer hits).
        assert_eq!(
            ef_of(search(10, Some(100), false).narrowed(0.333, 64)),
            Some(34)
        );
        assert_eq!(ef_of(search(40, None, false).narrowed(0.25, 64)), Some(40));
        // Full breadth changes nothing: the server default still applies later.
        assert_eq!(ef_of(search(10, None, false).narrowed(1.0, 64)), None);
        assert_eq!(ef_of(search(10, None, true).narrowed(0.1, 64)), None);
        assert_eq!(
            ef_of(search(10, Some(64), false).narrowed(f64::NAN, 64)),
            Some(64)
        );
    }

    #[test]
    fn apply_refuses_a_logged_vector_of_another_width() {
        let shape = Shape {
            dimensions: 3,
            metric: Metric::L2,
        };
        let engine = Engine::new(shape, HnswParams::default(), 16).expect("engine");
        let record = Record::Upsert(vec![
            (1, vec![1.0, 2.0, 3.0], Payload::new()),
            (2, vec![1.0, 2.0], Payload::new()),
        ]);
        let error = engine
            .apply(1, &record)
            .expect_err("two values in a 3-wide index");
        assert!(
            matches!(&error, Error::InvalidArgument { field, .. } if field == "point 2"),
            "{error:?}"
        );
        assert!(engine.is_empty(), "nothing of the record is applied");
        assert_eq!(engine.sequence(), 0);
    }

    /// On usearch where the build has it (these tests were written against it), else on
    /// our graph.
    fn l2_engine(dimensions: usize) -> Engine {
        #[cfg(feature = "usearch")]
        let ann = AnnEngine::Usearch;
        #[cfg(not(feature = "usearch"))]
        let ann = AnnEngine::Graph;
        l2_engine_of(dimensions, ann)
    }

    fn l2_engine_of(dimensions: usize, engine: AnnEngine) -> Engine {
        let shape = Shape {
            dimensions,
            metric: Metric::L2,
        };
        let hnsw = HnswParams {
            engine,
            ..HnswParams::default()
        };
        Engine::new(shape, hnsw, 256).expect("engine")
    }

    fn nearest(engine: &Engine, vector: &[f32], k: usize) -> Vec<Hit> {
        engine
            .search_blocking(&Search {
                query: Query::Vector(vector.to_vec()),
                k,
                ef: Some(256),
                exact: false,
                with_payload: false,
            })
            .expect("search")
    }

    /// Applied and not indexed (no indexer runs here): found by its own vector all the same,
    /// and a replaced point is found at its new place only, before and after indexing.
    #[test]
    fn a_written_point_is_found_before_the_graph_has_it() {
        let engine = l2_engine(2);
        let upsert = |sequence, id, v: [f32; 2]| {
            engine
                .apply(
                    sequence,
                    &Record::Upsert(vec![(id, v.to_vec(), Payload::new())]),
                )
                .expect("apply")
        };
        upsert(1, 1, [0.0, 0.0]);
        upsert(2, 2, [10.0, 0.0]);
        engine.index_all().expect("index");
        assert_eq!(engine.tail_len(), 0);
        upsert(3, 3, [5.0, 5.0]);
        assert_eq!(engine.tail_len(), 1);
        assert_eq!(nearest(&engine, &[5.0, 5.0], 1)[0].id, 3);
        // Replaced: the graph's old vector of 1 must not answer for it.
        upsert(4, 1, [100.0, 100.0]);
        let hits = nearest(&engine, &[0.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(hits[2].distance, 2.0 * 100.0 * 100.0);
        engine.apply(5, &Record::Delete(vec![2])).expect("delete");
        assert_eq!(nearest(&engine, &[10.0, 0.0], 3).len(), 2);
        engine.index_all().expect("index");
        assert_eq!(engine.tail_len(), 0);
        let hits = nearest(&engine, &[0.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3, 1]);
    }

    /// A full tail holds the writer until the indexer makes room.
    #[test]
    fn a_full_tail_holds_writers_until_indexed() {
        let engine = Arc::new(l2_engine(1).with_tail_limit(3));
        let points = (0..3u64)
            .map(|id| (id, vec![id as f32], Payload::new()))
            .collect();
        engine.apply(1, &Record::Upsert(points)).expect("apply");
        let indexer = {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                engine.index_step().expect("index")
            })
        };
        let stop = AtomicBool::new(false);
        engine.wait_for_room(&stop);
        assert_eq!(
            engine.tail_len(),
            2,
            "room was made before the writer went on"
        );
        assert!(indexer.join().expect("indexer"));
    }

    /// Indexers side by side while points are written, rewritten and deleted: once they
    /// have caught up, the graph holds exactly the stored points, each at its current vector
    /// (no stale write left behind by an insert that raced its own rewrite, none lost).
    #[test]
    fn indexers_side_by_side_leave_the_graph_equal_to_the_store() {
        use rand::{Rng, SeedableRng};
        let shape = Shape {
            dimensions: 16,
            metric: Metric::L2,
        };
        let hnsw = HnswParams {
            insert_threads: 3,
            ..HnswParams::default()
        };
        let engine = Arc::new(Engine::new(shape, hnsw, 64).expect("engine"));
        assert_eq!(engine.indexers(), 3);
        let stop = Arc::new(AtomicBool::new(false));
        let indexers: Vec<_> = (0..engine.indexers())
            .map(|_| {
                let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
                std::thread::spawn(move || engine.run_indexer(&stop))
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        // Few ids, so that a point is often written again while an indexer inserts it.
        for sequence in 1..=20_000u64 {
            let id = rng.random_range(0..50u64);
            let record = if rng.random_bool(0.15) {
                Record::Delete(vec![id])
            } else {
                let v = (0..16)
                    .map(|_| rng.random_range(-100.0..100.0f32))
                    .collect();
                Record::Upsert(vec![(id, v, Payload::new())])
            };
            engine.apply(sequence, &record).expect("apply");
            if sequence % 20 == 0 {
                // Let the indexers take points while writes go on.
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        stop.store(true, Ordering::Release);
        for indexer in indexers {
            indexer.join().expect("indexer");
        }
        engine.index_all().expect("index");
        assert_eq!(engine.tail_len(), 0);
        let frozen = engine.freeze().expect("freeze");
        let store = engine.store_read().expect("store");
        assert_eq!(
            frozen.ann().len(),
            store.len(),
            "graph and store hold the same points"
        );
        for (id, vector, _) in store.iter() {
            let hits = frozen.ann().search(vector, 1, 256).expect("search");
            assert_eq!(
                hits.first().map(|h| (h.id, h.distance)),
                Some((id, 0.0)),
                "point {id}"
            );
        }
    }

    mod merged {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Upsert(u64, [i8; 3]),
            Delete(u64),
            Index(usize),
        }

        /// Writes of fresh ids only, or (`rewrites`) of ids 0..40 again and deletes too.
        fn ops(rewrites: bool) -> impl Strategy<Value = Vec<(usize, Op)>> {
            let op = prop_oneof![
                4 => (0..40u64, any::<[i8; 3]>()).prop_map(|(id, v)| Op::Upsert(id, v)),
                if rewrites { 1 } else { 0 } => (0..40u64).prop_map(Op::Delete),
                1 => (0..20usize).prop_map(Op::Index),
            ];
            proptest::collection::vec(op, 1..120)
                .prop_map(move |ops| ops.into_iter().enumerate().collect())
        }

        /// Either graph implementation (`--ann-engine`) this build has.
        #[cfg(feature = "usearch")]
        fn ann_engine() -> impl Strategy<Value = AnnEngine> {
            prop_oneof![Just(AnnEngine::Usearch), Just(AnnEngine::Graph)]
        }

        /// The one graph implementation a build without usearch has.
        #[cfg(not(feature = "usearch"))]
        fn ann_engine() -> impl Strategy<Value = AnnEngine> {
            Just(AnnEngine::Graph)
        }

        /// Applies `ops` (a fresh id per upsert unless `rewrites`); returns the engine.
        fn run(ops: &[(usize, Op)], rewrites: bool, ann: AnnEngine) -> Engine {
            let engine = l2_engine_of(3, ann);
            for (i, op) in ops {
                let sequence = *i as u64 + 1;
                match op {
                    Op::Upsert(id, v) => {
                        let id = if rewrites { *id } else { *i as u64 };
                        let v = v.iter().map(|&x| f32::from(x)).collect();
                        let record = Record::Upsert(vec![(id, v, Payload::new())]);
                        engine.apply(sequence, &record).expect("upsert");
                    }
                    Op::Delete(id) => {
                        engine
                            .apply(sequence, &Record::Delete(vec![*id]))
                            .expect("delete");
                    }
                    Op::Index(n) => {
                        for _ in 0..*n {
                            engine.index_step().expect("index");
                        }
                    }
                }
            }
            engine
        }

        fn vector(v: [i8; 3]) -> Vec<f32> {
            v.iter().map(|&x| f32::from(x)).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Whatever part of the points the graph has taken, graph + tail answers what the
            /// exact scan answers (small sets, breadth beyond their size: HNSW is exact there).
            #[test]
            fn graph_and_tail_merged_equal_the_exact_scan(
                ops in ops(false),
                query in any::<[i8; 3]>(),
                ann in ann_engine(),
            ) {
                let engine = run(&ops, false, ann);
                let query = vector(query);
                let k = 5;
                let exact = engine.store_read().expect("store").exact_search(&query, k);
                let merged = nearest(&engine, &query, k);
                // Ties may order ids differently; the distances must be the same.
                let want: Vec<f32> = exact.iter().map(|n| n.distance).collect();
                let got: Vec<f32> = merged.iter().map(|h| h.distance).collect();
                prop_assert_eq!(got, want);
            }

            /// With points rewritten and deleted while the graph catches up: every hit is a
            /// stored point at the distance of its current vector (never a stale graph
            /// vector, never twice), nearest first, and every tail point that belongs in the
            /// exact answer is in it. (The graph's own recall after removals is usearch's:
            /// removed nodes can leave others unreachable even on tiny sets, so exact
            /// equality is not asked of it here.)
            #[test]
            fn rewritten_points_answer_with_their_current_vector(
                ops in ops(true),
                query in any::<[i8; 3]>(),
                ann in ann_engine(),
            ) {
                let engine = run(&ops, true, ann);
                let query = vector(query);
                let k = 5;
                let merged = nearest(&engine, &query, k);
                let mut ids: Vec<u64> = merged.iter().map(|h| h.id).collect();
                ids.sort_unstable();
                ids.dedup();
                prop_assert_eq!(ids.len(), merged.len(), "each id once");
                prop_assert!(merged.windows(2).all(|w| w[0].distance <= w[1].distance));
                for hit in &merged {
                    let stored = engine.get(hit.id).expect("a hit is a stored point");
                    let d = crate::index::distance::l2_squared_portable(&stored.vector, &query);
                    prop_assert_eq!(d, hit.distance);
                }
                let exact = engine.store_read().expect("store").exact_search(&query, k);
                let worst = merged.last().map_or(f32::INFINITY, |h| h.distance);
                for n in exact {
                    if engine.tail_read().expect("tail").contains(n.id) && n.distance < worst {
                        prop_assert!(merged.iter().any(|h| h.id == n.id), "tail point {} missed", n.id);
                    }
                }
            }
        }
    }
}
