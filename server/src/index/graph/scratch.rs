//! What a search carries besides the graph: candidates by distance, the visited marks, and
//! the reused buffers a search takes from a pool.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A row with its distance to whatever is being searched for; ordered by distance.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scored {
    pub(super) distance: f32,
    pub(super) row: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.row.cmp(&other.row))
    }
}

/// Which rows a search has seen: a stamp per row, compared with this search's generation,
/// so starting a search costs one increment instead of clearing an array or a hash set.
#[derive(Default)]
pub(super) struct Visited {
    stamps: Vec<u16>,
    generation: u16,
}

impl Visited {
    pub(super) fn start(&mut self, rows: usize) {
        if self.stamps.len() < rows {
            self.stamps.resize(rows, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Every 65535 searches the stamps could collide with old ones: clear them.
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `row` visited; whether it was not before.
    #[inline]
    pub(super) fn first_visit(&mut self, row: u32) -> bool {
        let stamp = &mut self.stamps[row as usize];
        let first = *stamp != self.generation;
        *stamp = self.generation;
        first
    }
}

/// Everything a search needs besides the graph, reused across searches (taken from a pool)
/// so that a search allocates nothing in its loop.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) visited: Visited,
    /// Nodes still to expand, nearest first.
    pub(super) candidates: BinaryHeap<Reverse<Scored>>,
    /// The best `ef` found so far, farthest on top.
    pub(super) results: BinaryHeap<Scored>,
    /// One node's unvisited neighbours, gathered before their distances are computed.
    pub(super) batch: Vec<u32>,
}
