//! The tail: points acknowledged and stored but not yet in the graph, and the graph entries
//! that no longer hold (deleted or replaced points), so that a write is searchable the moment
//! it is applied while the graph catches up in the background.
//!
//! Why: inserting into the HNSW graph costs ~100-200 us per point on one writer, ten times the
//! cost of logging it. Writes now go to the log, the point store and this tail; one indexer
//! takes points from the tail's front into the graph. A search scans the tail exactly (its
//! vectors sit in one arena, see [`PointStore`]) and [`merge`]s that with the graph's answer,
//! dropping graph hits the tail *shadows* (their graph vector is stale or their point gone).
//! The tail is bounded by the caller (writers wait when it is full), so a search's extra cost
//! is bounded too.
//!
//! Rules the caller keeps: every change here happens under one lock together with the point
//! store's change; the indexer inserts an entry into the graph *before* calling
//! [`Tail::indexed`], and removes it from the graph again when that returns `false`.

use std::collections::{HashMap, HashSet, VecDeque};

use super::store::{Payload, PointStore};
use super::{Metric, Neighbor};

/// What the indexer takes from the tail: a point to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The point's id.
    pub id: u64,
    /// Which write of it this is (see [`Tail::indexed`]).
    pub generation: u64,
    /// Its vector.
    pub vector: Vec<f32>,
}

/// Points waiting for the graph, and graph entries waiting to leave it.
#[derive(Debug)]
pub struct Tail {
    points: PointStore,
    generation: HashMap<u64, u64>,
    /// Ids in the order they arrived; may hold ids since deleted (skipped when taken).
    queue: VecDeque<u64>,
    /// Ids the graph holds that must leave it: deleted, or replaced by a tail point.
    removals: HashSet<u64>,
    /// Ids an indexer has taken and not yet reported (see [`Tail::take_oldest`]).
    in_flight: HashSet<u64>,
    next_generation: u64,
}

impl Tail {
    /// An empty tail for `dimensions`-wide vectors.
    pub fn new(dimensions: usize, metric: Metric) -> Self {
        Self {
            points: PointStore::new(dimensions, metric),
            generation: HashMap::new(),
            queue: VecDeque::new(),
            removals: HashSet::new(),
            in_flight: HashSet::new(),
            next_generation: 0,
        }
    }

    /// Points waiting for the graph.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether no point waits for the graph.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Graph entries waiting to be removed.
    pub fn removals(&self) -> usize {
        self.removals.len()
    }

    /// Whether `id` waits for the graph.
    pub fn contains(&self, id: u64) -> bool {
        self.points.contains(id)
    }

    /// Whether a graph hit for `id` must be dropped: the tail holds a newer vector of it, or
    /// the graph's entry is to be removed.
    pub fn shadows(&self, id: u64) -> bool {
        self.points.contains(id) || self.removals.contains(&id)
    }

    /// A point written. `in_graph`: whether the graph may hold an older vector of it (the
    /// store had it and the tail did not), which must then leave the graph.
    pub fn upsert(&mut self, id: u64, vector: &[f32], in_graph: bool) {
        if in_graph {
            self.removals.insert(id);
        }
        if !self.points.contains(id) {
            self.queue.push_back(id);
        }
        self.points.upsert(id, vector, Payload::new());
        self.next_generation += 1;
        self.generation.insert(id, self.next_generation);
    }

    /// A point deleted. `in_graph` as for [`Tail::upsert`].
    pub fn delete(&mut self, id: u64, in_graph: bool) {
        if in_graph {
            self.removals.insert(id);
        }
        self.points.remove(id);
        self.generation.remove(&id);
    }

    /// The graph entries to remove now; the caller removes them from the graph before it
    /// releases the lock that keeps other graph writers out.
    pub fn take_removals(&mut self) -> Vec<u64> {
        self.removals.drain().collect()
    }

    /// Whether any point waits to be taken by an indexer (points being indexed do not).
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes the oldest point waiting, copied, for one indexer: it stays in the tail (and
    /// searchable) until [`Tail::indexed`] or [`Tail::give_back`] reports on it, and no other
    /// indexer is given the same id meanwhile (a point written again while it is indexed is
    /// queued again by `indexed`), so indexers side by side always insert distinct ids.
    pub fn take_oldest(&mut self) -> Option<Pending> {
        while let Some(id) = self.queue.pop_front() {
            if self.in_flight.contains(&id) {
                // Written again while being indexed; `indexed` queues it again.
                continue;
            }
            if let (Some(&generation), Some(vector)) =
                (self.generation.get(&id), self.points.vector(id))
            {
                self.in_flight.insert(id);
                return Some(Pending {
                    id,
                    generation,
                    vector: vector.to_vec(),
                });
            }
            // Deleted after it was queued.
        }
        None
    }

    /// Gives back a point taken by [`Tail::take_oldest`] that the graph could not take, to
    /// be taken again first.
    pub fn give_back(&mut self, pending: &Pending) {
        self.in_flight.remove(&pending.id);
        if self.points.contains(pending.id) {
            self.queue.push_front(pending.id);
        }
    }

    /// The graph now holds `pending`. Returns `true` when that was still the point's newest
    /// write (it leaves the tail), `false` when it was replaced or deleted meanwhile: the
    /// caller then removes it from the graph again and calls [`Tail::released`]; until then
    /// the id stays taken, so no other indexer inserts its newer write only to have it removed.
    pub fn indexed(&mut self, pending: &Pending) -> bool {
        if self.generation.get(&pending.id) == Some(&pending.generation) {
            self.in_flight.remove(&pending.id);
            self.generation.remove(&pending.id);
            self.points.remove(pending.id);
            true
        } else {
            false
        }
    }

    /// The graph no longer holds the stale write `pending` ([`Tail::indexed`] said `false`):
    /// its id is free for the indexers again, and queued again if a newer write waits.
    pub fn released(&mut self, pending: &Pending) {
        self.in_flight.remove(&pending.id);
        if self.points.contains(pending.id) {
            self.queue.push_back(pending.id);
        }
    }

    /// The exact `k` nearest tail points to `query`, nearest first.
    pub fn exact_search(&self, query: &[f32], k: usize) -> Vec<Neighbor> {
        self.points.exact_search(query, k)
    }
}

/// The `k` nearest of two answers, nearest first (ties by id), each id once at its smaller
/// distance (a point that moved from the tail into the graph while a search ran shows in both).
pub fn merge(mut hits: Vec<Neighbor>, more: Vec<Neighbor>, k: usize) -> Vec<Neighbor> {
    hits.extend(more);
    hits.sort_by(|a, b| a.id.cmp(&b.id).then(a.distance.total_cmp(&b.distance)));
    hits.dedup_by_key(|n| n.id);
    hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
    hits.truncate(k);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_leave_in_order_unless_rewritten_meanwhile() {
        let mut tail = Tail::new(1, Metric::L2);
        tail.upsert(1, &[1.0], false);
        tail.upsert(2, &[2.0], true);
        tail.upsert(3, &[3.0], false);
        assert_eq!(tail.len(), 3);
        assert!(tail.shadows(2));
        assert_eq!(tail.take_removals(), vec![2]);
        let first = tail.take_oldest().expect("1 waits");
        assert_eq!(first.id, 1);
        // Rewritten while being indexed: stays, and its id stays taken until the stale
        // write has left the graph again.
        tail.upsert(1, &[10.0], false);
        assert!(!tail.indexed(&first));
        tail.delete(2, false);
        let next = tail.take_oldest().expect("3 waits");
        assert_eq!(next.id, 3, "2 was deleted, 1 is still taken");
        assert!(tail.indexed(&next));
        assert!(tail.take_oldest().is_none());
        tail.released(&first);
        let again = tail.take_oldest().expect("1 again");
        assert_eq!((again.id, again.vector.as_slice()), (1, &[10.0][..]));
        assert!(tail.indexed(&again));
        assert!(tail.take_oldest().is_none());
        assert!(tail.is_empty());
    }

    #[test]
    fn merge_keeps_each_id_once_nearest_first() {
        let n = |id, distance| Neighbor { id, distance };
        let merged = merge(
            vec![n(1, 0.5), n(2, 0.1), n(3, 0.9)],
            vec![n(3, 0.2), n(4, 0.3)],
            3,
        );
        assert_eq!(merged, vec![n(2, 0.1), n(3, 0.2), n(4, 0.3)]);
    }
}
