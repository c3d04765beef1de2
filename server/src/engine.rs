//! The engine: one vector index (points, HNSW graph, embedder) and the rules for using it from
//! async code.
//!
//! Index work is CPU-bound and synchronous, so every search and write runs on tokio's blocking
//! pool, never on the threads that drive the network. Searches first take one of a fixed number
//! of *search slots* (the ANN index's thread slots). Writes arrive as logged [`Record`]s and are
//! applied one at a time in sequence order (see `storage`), which is also what the ANN index
//! needs (see `index::hnsw`). A write goes to the point store before the graph and leaves the
//! graph before the store, so a graph hit always has a point behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use tokio::sync::Semaphore;

use crate::embed::{Embedder, HashingEmbedder};
use crate::error::Error;
use crate::index::hnsw::{HnswParams, UsearchAnn};
use crate::index::store::{Payload, PointStore, StoredPoint};
use crate::index::{Ann, IndexError, Metric, Neighbor};

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
        let ann = UsearchAnn::new(shape.dimensions, shape.metric, hnsw)?;
        Ok(Self::from_parts(
            shape,
            default_ef,
            PointStore::new(shape.dimensions, shape.metric),
            Box::new(ann),
            0,
        ))
    }

    /// An engine over an existing store and graph (loaded from a snapshot) at `sequence`.
    pub fn from_parts(
        shape: Shape,
        default_ef: usize,
        store: PointStore,
        ann: Box<dyn Ann>,
        sequence: u64,
    ) -> Self {
        let slots = ann.search_threads();
        Self {
            shape,
            default_ef: default_ef.max(1),
            store: RwLock::new(store),
            ann,
            embedder: Box::new(HashingEmbedder::new(shape.dimensions)),
            writer: Mutex::new(()),
            search_slots: Arc::new(Semaphore::new(slots)),
            sequence: AtomicU64::new(sequence),
        }
    }

    /// Holds off writes (and snapshots) until the returned guard is dropped, so that what
    /// it shows is one consistent state: for taking a snapshot.
    pub fn freeze(&self) -> Frozen<'_> {
        Frozen {
            engine: self,
            _writer: self.writer.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Static facts about the index.
    pub fn shape(&self) -> Shape {
        self.shape
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

    /// Runs a search on the blocking pool, within the search-slot limit.
    pub async fn search(self: &Arc<Self>, search: Search) -> Result<Vec<Hit>, Error> {
        let permit = self
            .search_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            crate::priority::as_index_work();
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
            self.store
                .read()
                .map_err(|_| Error::Worker("point store lock poisoned".into()))?
                .exact_search(query, search.k)
        } else {
            let ef = search.ef.unwrap_or(self.default_ef);
            self.ann.search(query, search.k, ef)?
        };
        let store = self
            .store
            .read()
            .map_err(|_| Error::Worker("point store lock poisoned".into()))?;
        Ok(neighbors
            .into_iter()
            // A point deleted while this search ran may still be in the graph's answer.
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
        let touched = match record {
            Record::Upsert(points) => {
                for (id, vector, payload) in points {
                    self.store
                        .write()
                        .map_err(|_| Error::Worker("point store lock poisoned".into()))?
                        .upsert(*id, vector, payload.clone());
                    self.ann.insert(*id, vector)?;
                }
                points.len()
            }
            Record::Delete(ids) => {
                let mut deleted = 0;
                for &id in ids {
                    let exists = self
                        .store
                        .read()
                        .map_err(|_| Error::Worker("point store lock poisoned".into()))?
                        .contains(id);
                    if !exists {
                        continue;
                    }
                    self.ann.remove(id)?;
                    if self
                        .store
                        .write()
                        .map_err(|_| Error::Worker("point store lock poisoned".into()))?
                        .remove(id)
                    {
                        deleted += 1;
                    }
                }
                deleted
            }
        };
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
            }
        }
        Ok(())
    }
}

/// The engine with writes held off (see [`Engine::freeze`]).
pub struct Frozen<'a> {
    engine: &'a Engine,
    _writer: MutexGuard<'a, ()>,
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
}
