//! Every point the server holds, and the exact (brute-force) scan over them.
//!
//! Vectors live in one contiguous arena, row by row, with their norms precomputed, so the
//! exact scan streams through memory instead of chasing pointers. Deleted rows are reused.
//! The exact scan is the ground truth that ANN recall is measured against.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::distance::{distance, norm};
use super::{Metric, Neighbor};

/// A point's metadata, as given by the client.
pub type Payload = HashMap<String, String>;

/// A point as stored: its vector and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    /// The point's id.
    pub id: u64,
    /// The vector as indexed (for text points, the embedding).
    pub vector: Vec<f32>,
    /// The payload as given.
    pub payload: Payload,
}

/// All stored points of one index.
#[derive(Debug)]
pub struct PointStore {
    dimensions: usize,
    metric: Metric,
    row_of: HashMap<u64, usize>,
    /// `ids[row]` is the id held in that row, or `None` for a free row.
    ids: Vec<Option<u64>>,
    vectors: Vec<f32>,
    norms: Vec<f32>,
    payloads: Vec<Payload>,
    free: Vec<usize>,
}

impl PointStore {
    /// An empty store for `dimensions`-wide vectors.
    pub fn new(dimensions: usize, metric: Metric) -> Self {
        Self {
            dimensions,
            metric,
            row_of: HashMap::new(),
            ids: Vec::new(),
            vectors: Vec::new(),
            norms: Vec::new(),
            payloads: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Vector width.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.row_of.len()
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.row_of.is_empty()
    }

    /// Whether `id` is stored.
    pub fn contains(&self, id: u64) -> bool {
        self.row_of.contains_key(&id)
    }

    /// Inserts or replaces a point. The vector must be `dimensions` wide (checked upstream).
    pub fn upsert(&mut self, id: u64, vector: &[f32], payload: Payload) {
        debug_assert_eq!(vector.len(), self.dimensions);
        let row = match self.row_of.get(&id) {
            Some(&row) => row,
            None => {
                let row = match self.free.pop() {
                    Some(row) => row,
                    None => {
                        self.ids.push(None);
                        self.vectors
                            .resize(self.vectors.len() + self.dimensions, 0.0);
                        self.norms.push(0.0);
                        self.payloads.push(Payload::new());
                        self.ids.len() - 1
                    }
                };
                self.row_of.insert(id, row);
                row
            }
        };
        self.ids[row] = Some(id);
        self.vectors[row * self.dimensions..(row + 1) * self.dimensions].copy_from_slice(vector);
        self.norms[row] = norm(vector);
        self.payloads[row] = payload;
    }

    /// Removes a point; returns whether it existed.
    pub fn remove(&mut self, id: u64) -> bool {
        match self.row_of.remove(&id) {
            Some(row) => {
                self.ids[row] = None;
                self.payloads[row] = Payload::new();
                self.free.push(row);
                true
            }
            None => false,
        }
    }

    /// The stored vector of `id`.
    pub fn vector(&self, id: u64) -> Option<&[f32]> {
        let row = *self.row_of.get(&id)?;
        Some(&self.vectors[row * self.dimensions..(row + 1) * self.dimensions])
    }

    /// The payload of `id`.
    pub fn payload(&self, id: u64) -> Option<&Payload> {
        let row = *self.row_of.get(&id)?;
        Some(&self.payloads[row])
    }

    /// A copy of the whole point.
    pub fn get(&self, id: u64) -> Option<StoredPoint> {
        Some(StoredPoint {
            id,
            vector: self.vector(id)?.to_vec(),
            payload: self.payload(id)?.clone(),
        })
    }

    /// Every point, in row order (used by snapshots and index rebuilds).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[f32], &Payload)> + '_ {
        self.ids.iter().enumerate().filter_map(move |(row, id)| {
            id.map(|id| {
                (
                    id,
                    &self.vectors[row * self.dimensions..(row + 1) * self.dimensions],
                    &self.payloads[row],
                )
            })
        })
    }

    /// The exact `k` nearest points to `query`, nearest first (ties broken by id).
    pub fn exact_search(&self, query: &[f32], k: usize) -> Vec<Neighbor> {
        if k == 0 {
            return Vec::new();
        }
        let query_norm = norm(query);
        // A max-heap of the best k so far: its top is the worst of them, the one to evict.
        let mut best: BinaryHeap<Candidate> = BinaryHeap::with_capacity(k + 1);
        for (row, id) in self.ids.iter().enumerate() {
            let Some(id) = *id else { continue };
            let stored = &self.vectors[row * self.dimensions..(row + 1) * self.dimensions];
            let d = distance(self.metric, query, query_norm, stored, self.norms[row]);
            let candidate = Candidate { distance: d, id };
            if best.len() < k {
                best.push(candidate);
            } else if let Some(worst) = best.peek()
                && candidate < *worst
            {
                best.pop();
                best.push(candidate);
            }
        }
        let mut hits: Vec<Neighbor> = best
            .into_iter()
            .map(|c| Neighbor {
                id: c.id,
                distance: c.distance,
            })
            .collect();
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        hits
    }
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    distance: f32,
    id: u64,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.id.cmp(&other.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_replace_remove_reuse() {
        let mut store = PointStore::new(2, Metric::L2);
        store.upsert(1, &[0.0, 0.0], Payload::new());
        store.upsert(2, &[1.0, 0.0], Payload::from([("a".into(), "b".into())]));
        store.upsert(1, &[5.0, 5.0], Payload::new());
        assert_eq!(store.len(), 2);
        assert_eq!(store.vector(1), Some(&[5.0, 5.0][..]));
        assert!(store.remove(1));
        assert!(!store.remove(1));
        assert_eq!(store.len(), 1);
        store.upsert(3, &[2.0, 0.0], Payload::new());
        assert_eq!(store.ids.len(), 2, "the freed row is reused");
        assert_eq!(store.payload(2).map(|p| p["a"].as_str()), Some("b"));
    }

    #[test]
    fn exact_search_orders_by_distance() {
        let mut store = PointStore::new(1, Metric::L2);
        for (id, x) in [(10, 3.0), (11, -1.0), (12, 0.5), (13, 10.0)] {
            store.upsert(id, &[x], Payload::new());
        }
        let hits = store.exact_search(&[0.0], 3);
        let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        assert_eq!(ids, vec![12, 11, 10]);
        assert_eq!(hits[0].distance, 0.25);
        assert_eq!(store.exact_search(&[0.0], 10).len(), 4);
    }
}
