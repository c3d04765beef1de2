//! usearch's HNSW behind our [`Ann`] trait (`--ann-engine usearch`), the alternative to our
//! own graph ([`super::graph`]). Compiled only with the `usearch` cargo feature: usearch is
//! C++, and a default build needs no C++ compiler.
//!
//! usearch's rules, which this type exists to keep so that no client ever sees them:
//! - every add and search locks one of a fixed number of *thread slots* and fails outright when
//!   none is free, so we reserve `search_threads + 1` slots (one for the single writer) and the
//!   caller bounds concurrent searches to `search_threads`;
//! - capacity must be reserved before adds, and reserving is not safe while searches run, so the
//!   index sits in an `RwLock`: searches share it; growth, adds and removes take it exclusively
//!   (a search beside an add was seen to crash on a bad vector pointer);
//! - concurrent adds can leave nodes unreachable (an open upstream bug), so writes are applied
//!   by one writer at a time (the `Ann` contract);
//! - the search breadth is a global setting, so a per-request `ef` is expressed as the number of
//!   candidates asked for (usearch explores `max(expansion, wanted)`), then cut to `k`;
//! - distances are computed by our kernels ([`super::kernels`]), installed through usearch's
//!   custom-metric hook when the index is made and again after every load (a load restores
//!   the built-in metric named in the file).
//!
//! For cosine, vectors are normalised once on the way in and the graph uses inner product:
//! `1 - a·b` of unit vectors is exactly the cosine distance, at a third of the arithmetic of
//! usearch's own cosine kernel (which recomputes both norms at every comparison).

use std::path::Path;
use std::sync::RwLock;

use ::usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::distance::unit;
use super::{Ann, HnswParams, IndexError, Metric, Neighbor};

/// usearch's HNSW index.
pub struct UsearchAnn {
    index: RwLock<Index>,
    dimensions: usize,
    search_threads: usize,
    /// Cosine served as inner product over normalised vectors (see module docs).
    normalize: bool,
}

impl std::fmt::Debug for UsearchAnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsearchAnn")
            .field("dimensions", &self.dimensions)
            .field("search_threads", &self.search_threads)
            .field("len", &self.len())
            .finish()
    }
}

const INITIAL_CAPACITY: usize = 1024;

fn ann_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Ann(e.to_string())
}

impl UsearchAnn {
    /// An empty index.
    pub fn new(dimensions: usize, metric: Metric, params: HnswParams) -> Result<Self, IndexError> {
        let options = IndexOptions {
            dimensions,
            metric: match metric {
                Metric::Cosine => MetricKind::IP,
                Metric::L2 => MetricKind::L2sq,
                Metric::Ip => MetricKind::IP,
            },
            quantization: ScalarKind::F32,
            connectivity: params.connectivity,
            expansion_add: params.ef_construction,
            // The per-request ef is passed as the number of wanted results (see module docs),
            // so the index's own floor is kept minimal.
            expansion_search: 1,
            multi: false,
        };
        let mut index = Index::new(&options).map_err(ann_err)?;
        super::kernels::install(&mut index, metric);
        let search_threads = params.search_threads.max(1);
        index
            .reserve_capacity_and_threads(INITIAL_CAPACITY, search_threads + 1)
            .map_err(ann_err)?;
        Ok(Self {
            index: RwLock::new(index),
            dimensions,
            search_threads,
            normalize: metric == Metric::Cosine,
        })
    }

    /// Loads an index saved by [`Ann::save`], with the same options.
    pub fn load(
        path: &Path,
        dimensions: usize,
        metric: Metric,
        params: HnswParams,
    ) -> Result<Self, IndexError> {
        let ann = Self::new(dimensions, metric, params)?;
        {
            let mut index = ann.index.write().map_err(|_| poisoned())?;
            index.load(&path.to_string_lossy()).map_err(ann_err)?;
            super::kernels::install(&mut index, metric);
            if index.dimensions() != dimensions {
                return Err(IndexError::Ann(format!(
                    "saved index has {} dimensions, expected {dimensions}",
                    index.dimensions()
                )));
            }
            // Loading replaces the thread-slot reservation; restore ours.
            let capacity = index.capacity().max(index.size() + INITIAL_CAPACITY);
            index
                .reserve_capacity_and_threads(capacity, ann.search_threads + 1)
                .map_err(ann_err)?;
            index.change_expansion_search(1);
        }
        Ok(ann)
    }

    /// Switches the graph back to usearch's built-in kernels (numkong when compiled in): for
    /// benchmarks that compare them with ours on the same graph. Until the next load.
    pub fn use_builtin_metric(&self) -> Result<(), IndexError> {
        let index = self.index.write().map_err(|_| poisoned())?;
        let kind = index.metric_kind();
        index.change_metric_kind(kind).map_err(ann_err)
    }

    /// Makes room for one more vector, doubling capacity under the exclusive lock if needed.
    fn ensure_room(&self) -> Result<(), IndexError> {
        {
            let index = self.index.read().map_err(|_| poisoned())?;
            if index.size() < index.capacity() {
                return Ok(());
            }
        }
        let index = self.index.write().map_err(|_| poisoned())?;
        let wanted = (index.capacity() * 2).max(INITIAL_CAPACITY);
        index
            .reserve_capacity_and_threads(wanted, self.search_threads + 1)
            .map_err(ann_err)
    }
}

fn poisoned() -> IndexError {
    IndexError::Ann("index lock poisoned by an earlier panic".into())
}

impl Ann for UsearchAnn {
    fn insert(&self, id: u64, vector: &[f32]) -> Result<(), IndexError> {
        let normalized;
        let vector = if self.normalize {
            normalized = unit(vector);
            &normalized[..]
        } else {
            vector
        };
        self.ensure_room()?;
        // Exclusive: a search running beside an add (or a remove) crashed in our distance
        // kernel on a vector pointer usearch handed it (SIGSEGV in 4 of 25 runs of the storage
        // tests, which search right after each acknowledged batch while the indexer adds), so
        // adds and removes never overlap a search. Searches still share the lock among
        // themselves; the indexer's adds wait for them and hold them up for one add at most.
        let index = self.index.write().map_err(|_| poisoned())?;
        if index.contains(id) {
            index.remove(id).map_err(ann_err)?;
        }
        match index.add(id, vector) {
            Ok(()) => Ok(()),
            Err(first) => {
                // A removed slot may not be reusable yet; grow once and retry before failing.
                drop(index);
                let index = self.index.write().map_err(|_| poisoned())?;
                let wanted = (index.capacity() * 2).max(INITIAL_CAPACITY);
                index
                    .reserve_capacity_and_threads(wanted, self.search_threads + 1)
                    .map_err(ann_err)?;
                index
                    .add(id, vector)
                    .map_err(|e| IndexError::Ann(format!("{first}; after growing: {e}")))
            }
        }
    }

    fn remove(&self, id: u64) -> Result<(), IndexError> {
        // Exclusive, as in `insert`.
        let index = self.index.write().map_err(|_| poisoned())?;
        index.remove(id).map_err(ann_err)?;
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbor>, IndexError> {
        let normalized;
        let query = if self.normalize {
            normalized = unit(query);
            &normalized[..]
        } else {
            query
        };
        let index = self.index.read().map_err(|_| poisoned())?;
        let wanted = k.max(ef);
        let matches = index.search(query, wanted).map_err(ann_err)?;
        Ok(matches
            .keys
            .iter()
            .zip(&matches.distances)
            .take(k)
            .map(|(&id, &distance)| Neighbor { id, distance })
            .collect())
    }

    fn contains(&self, id: u64) -> bool {
        self.index.read().map(|i| i.contains(id)).unwrap_or(false)
    }

    fn len(&self) -> usize {
        self.index.read().map(|i| i.size()).unwrap_or(0)
    }

    fn search_threads(&self) -> usize {
        self.search_threads
    }

    fn save(&self, path: &Path) -> Result<(), IndexError> {
        let index = self.index.read().map_err(|_| poisoned())?;
        index.save(&path.to_string_lossy()).map_err(ann_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::store::{Payload, PointStore};
    use vecrig::synthetic::Synthetic;

    /// recall@10 of the ANN index against the exact scan, on a 10k clustered set.
    #[test]
    fn recall_at_10_against_exact_scan() {
        let dims = 64;
        let data = Synthetic::new(dims, 32, 3);
        let ann = UsearchAnn::new(dims, Metric::Cosine, HnswParams::default()).expect("index");
        let mut store = PointStore::new(dims, Metric::Cosine);
        for id in 0..10_000 {
            let p = data.point(id);
            ann.insert(id, &p.vector).expect("insert");
            store.upsert(id, &p.vector, Payload::new());
        }
        assert_eq!(ann.len(), 10_000);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
        let (mut found, mut total) = (0usize, 0usize);
        for _ in 0..200 {
            let q = data.query_vector(&mut rng);
            let truth: Vec<u64> = store.exact_search(&q, 10).iter().map(|n| n.id).collect();
            let got = ann.search(&q, 10, 64).expect("search");
            // Distances agree between the two paths.
            let exact_first = store.exact_search(&q, 1)[0];
            if got[0].id == exact_first.id {
                assert!((got[0].distance - exact_first.distance).abs() < 1e-3);
            }
            found += got.iter().filter(|n| truth.contains(&n.id)).count();
            total += truth.len();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.95, "recall@10 = {recall:.3}");
    }

    #[test]
    fn replace_remove_and_grow() {
        let ann = UsearchAnn::new(4, Metric::L2, HnswParams::default()).expect("index");
        for id in 0..3000u64 {
            ann.insert(id, &[id as f32, 0.0, 0.0, 0.0]).expect("insert");
        }
        ann.insert(5, &[-100.0, 0.0, 0.0, 0.0]).expect("replace");
        assert_eq!(ann.len(), 3000);
        let hits = ann.search(&[-100.0, 0.0, 0.0, 0.0], 1, 16).expect("search");
        assert_eq!(hits[0].id, 5);
        ann.remove(5).expect("remove");
        ann.remove(5).expect("absent ids are ignored");
        assert_eq!(ann.len(), 2999);
        for id in 0..1500u64 {
            ann.remove(id).expect("remove");
        }
        for id in 10_000..12_000u64 {
            ann.insert(id, &[id as f32, 1.0, 0.0, 0.0])
                .expect("insert after removals");
        }
        assert_eq!(ann.len(), 3500);
    }
}
