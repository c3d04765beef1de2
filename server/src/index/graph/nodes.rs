//! The graph proper: the vectors, the neighbour lists per level, ids to rows, and the walk
//! a search makes through them.

use std::cmp::Reverse;
use std::collections::HashMap;

use half::f16;

use super::scratch::{Scored, Scratch};
use super::slab::Slab;
use crate::index::{Metric, Neighbor, kernels};

/// "No row": the entry point of an empty graph.
pub(super) const NONE: u32 = u32::MAX;
/// Levels above this are never drawn (with M = 16 the chance of even reaching it is 16^-15).
pub(super) const MAX_LEVEL: usize = 15;

/// Largest `M` accepted (a file claiming more is corrupt).
pub(super) const MAX_CONNECTIVITY: usize = 256;

/// The graph proper. Read by searches and by the writer's planning; changed only by
/// [`Graph::apply`].
pub(super) struct Graph {
    pub(super) metric: Metric,
    pub(super) dimensions: usize,
    /// Links per node on upper levels (HNSW `M`); level 0 keeps `2M`.
    pub(super) m: usize,
    pub(super) ef_construction: usize,
    /// The vectors as given (normalised for cosine): what inserts link by and what a search's
    /// answers are ranked and measured with.
    pub(super) vectors: Slab<f32>,
    /// The same vectors at half width, what a search walks the graph with: a search's time is
    /// mostly waiting for vectors to arrive from memory, and 100k x 128-d is 51 MB as f32, more
    /// than this machine's 32 MB L3, but 26 MB as f16. An f16 keeps 11 significant bits, so
    /// it orders candidates as f32 does except between near-ties; the best `ef` it finds are
    /// ranked again exactly ([`Graph::search`]), so the answers and their distances are the
    /// f32 ones.
    pub(super) coarse: Slab<f16>,
    pub(super) ids: Vec<u64>,
    pub(super) levels: Vec<u8>,
    pub(super) removed: Vec<bool>,
    /// How many rows are tombstones (searches skip the check when there are none).
    pub(super) tombstones: usize,
    /// The tombstoned rows, the next insert's first (see the module docs).
    pub(super) free: Vec<u32>,
    /// Level-0 lists: per row, a count then `2M` rows.
    pub(super) links0: Vec<u32>,
    /// Levels 1..=level of each row: per level, a count then `M` rows.
    pub(super) upper: Vec<Vec<u32>>,
    /// Live ids to their row.
    pub(super) rows: HashMap<u64, u32>,
    pub(super) entry: u32,
    pub(super) max_level: usize,
}

impl Graph {
    pub(super) fn new(dimensions: usize, metric: Metric, m: usize, ef_construction: usize) -> Self {
        Self {
            metric,
            dimensions,
            m,
            ef_construction,
            vectors: Slab::new(dimensions),
            coarse: Slab::new(dimensions),
            ids: Vec::new(),
            levels: Vec::new(),
            removed: Vec::new(),
            tombstones: 0,
            free: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            rows: HashMap::new(),
            entry: NONE,
            max_level: 0,
        }
    }

    pub(super) fn block0(&self) -> usize {
        1 + 2 * self.m
    }

    pub(super) fn block_upper(&self) -> usize {
        1 + self.m
    }

    pub(super) fn capacity(&self, level: usize) -> usize {
        if level == 0 { 2 * self.m } else { self.m }
    }

    #[inline]
    pub(super) fn links(&self, row: u32, level: usize) -> &[u32] {
        let (block, at) = if level == 0 {
            (&self.links0[..], row as usize * self.block0())
        } else {
            (
                &self.upper[row as usize][..],
                (level - 1) * self.block_upper(),
            )
        };
        let count = block[at] as usize;
        &block[at + 1..at + 1 + count]
    }

    pub(super) fn set_links(&mut self, row: u32, level: usize, list: &[u32]) {
        let (block, at) = if level == 0 {
            let at = row as usize * self.block0();
            (&mut self.links0[..], at)
        } else {
            let at = (level - 1) * self.block_upper();
            (&mut self.upper[row as usize][..], at)
        };
        block[at] = list.len() as u32;
        block[at + 1..at + 1 + list.len()].copy_from_slice(list);
    }

    #[inline]
    pub(super) fn between(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.metric {
            Metric::L2 => kernels::l2_squared(a, b),
            // Cosine over unit vectors, and inner product: both `1 - a·b`.
            Metric::Cosine | Metric::Ip => 1.0 - kernels::dot(a, b),
        }
    }

    #[inline]
    pub(super) fn distance(&self, query: &[f32], row: u32) -> f32 {
        self.between(query, self.vectors.get(row))
    }

    /// The distance from `query` to `row`'s vector: its f16 copy when `COARSE`, else the
    /// exact one.
    #[inline]
    pub(super) fn distance_to<const COARSE: bool>(&self, query: &[f32], row: u32) -> f32 {
        if !COARSE {
            return self.distance(query, row);
        }
        let stored = self.coarse.get(row);
        match self.metric {
            Metric::L2 => kernels::l2_squared_f16(query, stored),
            Metric::Cosine | Metric::Ip => 1.0 - kernels::dot_f16(query, stored),
        }
    }

    /// Starts loading `row`'s vector: every line of its f16 copy when `COARSE`, else the
    /// first line of the exact one.
    ///
    /// Why every line of the f16 copy but one of the f32: the walk reads the whole f16 copy
    /// of every candidate, so prefetching all of it pays (`docs/benchmarks.md`, the ann
    /// bench); the f32 vectors are read only to rank the best `ef` again, and the stream
    /// prefetcher follows the first line there, so more hints change nothing measurable.
    #[inline]
    pub(super) fn prefetch<const COARSE: bool>(&self, row: u32) {
        if COARSE {
            for line in self.coarse.get(row).chunks(Slab::<f16>::PER_LINE) {
                kernels::prefetch(line);
            }
        } else {
            kernels::prefetch(self.vectors.get(row));
        }
    }

    /// Greedy descent on one upper level: move to the nearest neighbour while it is nearer.
    pub(super) fn greedy<const COARSE: bool>(
        &self,
        query: &[f32],
        mut at: Scored,
        level: usize,
    ) -> Scored {
        loop {
            let mut moved = false;
            let links = self.links(at.row, level);
            // All loads first, as on level 0: it pays most at a small ef, where the descent
            // is a larger share of a search.
            for &n in links {
                self.prefetch::<COARSE>(n);
            }
            for &n in links {
                let distance = self.distance_to::<COARSE>(query, n);
                if distance < at.distance {
                    at = Scored { distance, row: n };
                    moved = true;
                }
            }
            if !moved {
                return at;
            }
        }
    }

    /// The beam search of one level from `entry`, keeping the best `ef`; leaves them in
    /// `scratch.results`. With `live_only`, tombstones are traversed but not kept. With
    /// `COARSE`, distances are taken to the f16 copies.
    pub(super) fn search_level<const COARSE: bool>(
        &self,
        query: &[f32],
        entry: Scored,
        ef: usize,
        level: usize,
        live_only: bool,
        scratch: &mut Scratch,
    ) {
        let Scratch {
            visited,
            candidates,
            results,
            batch,
        } = scratch;
        let skip_removed = live_only && self.tombstones > 0;
        visited.start(self.ids.len());
        candidates.clear();
        results.clear();
        visited.first_visit(entry.row);
        candidates.push(Reverse(entry));
        if !(skip_removed && self.removed[entry.row as usize]) {
            results.push(entry);
        }
        let mut bound = results.peek().map_or(f32::INFINITY, |r| r.distance);
        while let Some(Reverse(nearest)) = candidates.pop() {
            if nearest.distance > bound && results.len() >= ef {
                break;
            }
            batch.clear();
            for &n in self.links(nearest.row, level) {
                if visited.first_visit(n) {
                    self.prefetch::<COARSE>(n);
                    batch.push(n);
                }
            }
            for &n in batch.iter() {
                let distance = self.distance_to::<COARSE>(query, n);
                if results.len() < ef || distance < bound {
                    let found = Scored { distance, row: n };
                    candidates.push(Reverse(found));
                    if !(skip_removed && self.removed[n as usize]) {
                        // Once `ef` are kept, the newcomer takes the farthest one's place: one
                        // sift down, where a push and a pop would sift twice.
                        if results.len() < ef {
                            results.push(found);
                        } else if let Some(mut farthest) = results.peek_mut() {
                            *farthest = found;
                        }
                        bound = results.peek().map_or(f32::INFINITY, |r| r.distance);
                    }
                }
            }
            // The next node to expand: start loading its neighbour list.
            if let Some(Reverse(next)) = candidates.peek()
                && level == 0
            {
                let at = next.row as usize * self.block0();
                kernels::prefetch(&self.links0[at..at + 1]);
            }
        }
    }

    /// Makes room in `links0` for `rows` more blocks, doubling, with huge pages asked for
    /// (see `kernels::advise_huge_pages`) before the new memory is touched.
    pub(super) fn grow_links0(&mut self, rows: usize) {
        let wanted = self.links0.len() + rows * self.block0();
        if wanted > self.links0.capacity() {
            let more = (wanted - self.links0.len())
                .max(self.links0.len())
                .max(1024 * self.block0());
            let mut links = Vec::with_capacity(self.links0.len() + more);
            kernels::advise_huge_pages(&links);
            links.extend_from_slice(&self.links0);
            self.links0 = links;
        }
    }

    pub(super) fn tombstone(&mut self, row: u32) {
        if !self.removed[row as usize] {
            self.removed[row as usize] = true;
            self.tombstones += 1;
            self.free.push(row);
        }
    }

    pub(super) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        scratch: &mut Scratch,
    ) -> Vec<Neighbor> {
        if self.entry == NONE || k == 0 {
            return Vec::new();
        }
        let mut at = Scored {
            distance: self.distance_to::<true>(query, self.entry),
            row: self.entry,
        };
        for l in (1..=self.max_level).rev() {
            at = self.greedy::<true>(query, at, l);
        }
        self.search_level::<true>(query, at, ef.max(k), 0, true, scratch);
        // The walk measured f16 copies: the best `ef` it found are ranked again by their
        // exact vectors, loads first as in the walk.
        for s in scratch.results.iter() {
            kernels::prefetch(self.vectors.get(s.row));
        }
        let mut found: Vec<Scored> = scratch
            .results
            .drain()
            .map(|s| Scored {
                distance: self.distance(query, s.row),
                row: s.row,
            })
            .collect();
        found.sort_unstable();
        found
            .iter()
            .take(k)
            .map(|s| Neighbor {
                id: self.ids[s.row as usize],
                distance: s.distance,
            })
            .collect()
    }
}
