//! Our own HNSW graph (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor
//! search using Hierarchical Navigable Small World graphs") behind the [`Ann`] trait.
//!
//! Why it exists: usearch does about as many distance computations as hnswlib for the same
//! recall, yet answers at 0.6-0.7x its QPS: each distance goes through indirect calls, every
//! candidate's key is read for a predicate that always passes, and nothing is prefetched. Here
//! the hot loop is ours, and the layout is chosen for it:
//! - vectors live inline in one contiguous slab (`Slab`), each starting on a cache line, on
//!   huge pages where Linux gives them (`kernels::advise_huge_pages`: fewer TLB misses),
//!   addressed by an internal `u32` slot; cosine vectors are normalised on the way in, so every
//!   cosine distance is `1 - a·b` (`distance::unit`: one dot product, no norms);
//! - a search walks the graph with a second copy of the vectors at half width (f16: half the
//!   bytes to wait for, and 100k x 128-d then fits the L3 cache), and ranks the best `ef` it
//!   found again with the f32 vectors, so its answers and distances are exact; inserts link by
//!   the f32 vectors (measured, ann bench, 100k x 128-d, same run: QPS from 0.96-1.03x
//!   hnswlib's to 1.32-1.34x on one thread at recall 0.95 and 0.99, recall unchanged);
//! - level-0 neighbour lists, where almost all the work happens, sit in one flat array with a
//!   fixed block of `1 + 2M` words per slot (count, then neighbours); the upper levels, which
//!   only one node in `M` has, are a small vector per slot;
//! - a search marks visited slots in a reused generation-stamped array (no hashing, no
//!   clearing), taken from a pool, and gathers a node's unvisited neighbours first, asking the
//!   CPU to prefetch their vectors, before computing any of their distances, so the memory
//!   loads overlap instead of each distance waiting for its own;
//! - neighbours are chosen with the paper's heuristic (keep a candidate only if it is nearer
//!   to the new node than to every neighbour already kept), which is what gives HNSW its recall
//!   on clustered data.
//!
//! External ids map to slots through a hash map. `remove` leaves a tombstone: the node stays in
//! the graph and is still traversed (its links keep the graph navigable) but is never
//! returned; inserting an id again tombstones its old slot. An insert takes a tombstoned slot
//! when there is one (as hnswlib's `replace_deleted` does), so a graph under rewrites and
//! deletes stays at its live size plus the tombstones of the moment instead of growing
//! without end: the slot keeps its level, takes the new vector, and is linked as a new node;
//! first, each of the old node's neighbours chooses its links again among its own neighbours
//! and the old node's, so that the links that led to the old vector are dropped rather than
//! left pointing at a vector they were never chosen for.
//!
//! Concurrency (the [`Ann`] contract: inserts of distinct ids from up to
//! [`Ann::insert_threads`] threads, removes and saves alone, searches beside all of them):
//! the graph sits in an `RwLock`. An insert does all the expensive work (the searches for its
//! neighbours, the pruning of their lists) under the *read* lock, beside searches and other
//! inserts, into a plan, and takes the write lock only to apply it: append one slot and copy
//! a few neighbour lists. Plans made side by side are reconciled when applied: each takes the
//! next slot then, and a neighbour list that changed since its plan read it is made again from
//! what it holds now. Inserts that would change what other plans rely on (the first node, a
//! new top level, a reused tombstone) run alone, behind a second lock (`writers`), as do
//! removes. Planners move in step (see [`GraphAnn::wait_for_applies`]). Measured on this
//! machine's two cores: the ann bench's 30k x 128-d build with two writers in 3.34 s against
//! 4.80 s with one, and the server's `--preload 100000` start in 12.3 s against 20.8 s.
//!
//! Files (`save`/[`GraphAnn::load`]): a versioned little-endian format of our own, checked
//! with a CRC-32 and validated field by field, so that a file of another width, metric or
//! version is refused by name and a truncated or corrupt one is an error, never a panic.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use half::f16;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::distance::unit;
use super::{Ann, HnswParams, IndexError, Metric, Neighbor, kernels};

/// "No slot": the entry point of an empty graph.
const NONE: u32 = u32::MAX;
/// The slot of the node a plan inserts when that slot is only known once the plan is applied
/// (a new slot at the end, whose number depends on the inserts applied meanwhile).
const PENDING: u32 = u32::MAX - 1;
/// Levels above this are never drawn (with M = 16 the chance of even reaching it is 16^-15).
const MAX_LEVEL: usize = 15;
/// The seed of the level generator: the same inserts build the same graph.
const LEVEL_SEED: u64 = 0x5eed_0016;

/// A slot with its distance to whatever is being searched for; ordered by distance.
#[derive(Debug, Clone, Copy)]
struct Scored {
    distance: f32,
    slot: u32,
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
            .then(self.slot.cmp(&other.slot))
    }
}

/// Vectors stored back to back, each padded to whole cache lines and the first starting on a
/// line boundary, so a vector never straddles more lines than it needs and a prefetch of its
/// first line is a prefetch of its start. `T` is `f32` for the exact vectors and `f16` for the
/// half-width copies that searches walk the graph with (see [`Graph::coarse`]).
///
/// The alignment is done without `unsafe`: the buffer is over-allocated by one line and used
/// from the first line boundary inside it. Growth therefore copies by hand (a reallocation
/// could move the boundary), doubling, so it is amortised.
struct Slab<T> {
    data: Vec<T>,
    /// Index in `data` of the first vector (the first line boundary).
    start: usize,
    dimensions: usize,
    /// Values per vector including padding: `dimensions` rounded up to whole lines.
    stride: usize,
    len: usize,
}

impl<T: Copy + Default> Slab<T> {
    /// Values of `T` per 64-byte cache line.
    const PER_LINE: usize = 64 / std::mem::size_of::<T>();

    fn new(dimensions: usize) -> Self {
        Self {
            data: Vec::new(),
            start: 0,
            dimensions,
            stride: dimensions.div_ceil(Self::PER_LINE).max(1) * Self::PER_LINE,
            len: 0,
        }
    }

    #[inline]
    fn get(&self, slot: u32) -> &[T] {
        let at = self.start + slot as usize * self.stride;
        &self.data[at..at + self.dimensions]
    }

    /// Overwrites a slot's vector (a reused tombstone's).
    fn set(&mut self, slot: u32, vector: &[T]) {
        let at = self.start + slot as usize * self.stride;
        self.data[at..at + self.dimensions].copy_from_slice(&vector[..self.dimensions]);
    }

    fn push(&mut self, vector: &[T]) {
        let end = self.start + (self.len + 1) * self.stride;
        if end > self.data.capacity() {
            self.grow((self.len * 2).max(1024));
        }
        self.data.extend_from_slice(&vector[..self.dimensions]);
        // Padding; `resize` within the capacity never reallocates.
        self.data
            .resize(self.start + (self.len + 1) * self.stride, T::default());
        self.len += 1;
    }

    fn grow(&mut self, slots: usize) {
        let mut data = Vec::with_capacity(slots * self.stride + Self::PER_LINE);
        kernels::advise_huge_pages(&data);
        // An allocation of `T` is aligned to `T`, so the distance to the next line boundary is
        // a whole number of values.
        let size = std::mem::size_of::<T>();
        let past_boundary = (data.as_ptr() as usize % 64) / size;
        let start = (Self::PER_LINE - past_boundary) % Self::PER_LINE;
        data.resize(start, T::default());
        data.extend_from_slice(&self.data[self.start..]);
        self.data = data;
        self.start = start;
    }
}

/// Which slots a search has seen: a stamp per slot, compared with this search's generation,
/// so starting a search costs one increment instead of clearing an array or a hash set.
#[derive(Default)]
struct Visited {
    stamps: Vec<u16>,
    generation: u16,
}

impl Visited {
    fn start(&mut self, slots: usize) {
        if self.stamps.len() < slots {
            self.stamps.resize(slots, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Every 65535 searches the stamps could collide with old ones: clear them.
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `slot` visited; whether it was not before.
    #[inline]
    fn first_visit(&mut self, slot: u32) -> bool {
        let stamp = &mut self.stamps[slot as usize];
        let first = *stamp != self.generation;
        *stamp = self.generation;
        first
    }
}

/// Everything a search needs besides the graph, reused across searches (taken from a pool)
/// so that a search allocates nothing in its loop.
#[derive(Default)]
struct Scratch {
    visited: Visited,
    /// Nodes still to expand, nearest first.
    candidates: BinaryHeap<Reverse<Scored>>,
    /// The best `ef` found so far, farthest on top.
    results: BinaryHeap<Scored>,
    /// One node's unvisited neighbours, gathered before their distances are computed.
    batch: Vec<u32>,
}

/// The graph proper. Read by searches and by the writer's planning; changed only by
/// [`Graph::apply`].
struct Graph {
    metric: Metric,
    dimensions: usize,
    /// Links per node on upper levels (HNSW `M`); level 0 keeps `2M`.
    m: usize,
    ef_construction: usize,
    /// The vectors as given (normalised for cosine): what inserts link by and what a search's
    /// answers are ranked and measured with.
    vectors: Slab<f32>,
    /// The same vectors at half width, what a search walks the graph with: a search's time is
    /// mostly waiting for vectors to arrive from memory, and 100k x 128-d is 51 MB as f32, more
    /// than this machine's 32 MB L3, but 26 MB as f16. An f16 keeps 11 significant bits, so
    /// it orders candidates as f32 does except between near-ties; the best `ef` it finds are
    /// ranked again exactly ([`Graph::search`]), so the answers and their distances are the
    /// f32 ones.
    coarse: Slab<f16>,
    ids: Vec<u64>,
    levels: Vec<u8>,
    removed: Vec<bool>,
    /// How many slots are tombstones (searches skip the check when there are none).
    tombstones: usize,
    /// The tombstoned slots, the next insert's first (see the module docs).
    free: Vec<u32>,
    /// Level-0 lists: per slot, a count then `2M` slots.
    links0: Vec<u32>,
    /// Levels 1..=level of each slot: per level, a count then `M` slots.
    upper: Vec<Vec<u32>>,
    /// Live ids to their slot.
    slots: HashMap<u64, u32>,
    entry: u32,
    max_level: usize,
}

/// What an insert will change, computed under the read lock (see module docs).
struct Plan {
    id: u64,
    vector: Vec<f32>,
    level: usize,
    /// The tombstoned slot the node takes (`None`: a new slot at the end).
    reuse: Option<u32>,
    /// The new node's own neighbours, per level from 0.
    own: Vec<Vec<u32>>,
    /// Existing nodes' new neighbour lists.
    updates: Vec<Update>,
}

/// One existing node's new neighbour list at one level, and what it was made from.
struct Update {
    slot: u32,
    level: usize,
    /// The list as the plan read it: if another insert changed it before this plan is
    /// applied, the new list is made again from the current one (see [`Graph::apply`]).
    read: Vec<u32>,
    /// The new list; [`PENDING`] stands for the inserted node's slot.
    list: Vec<u32>,
    /// Whether the new list links the inserted node (else it only repairs a reused slot's
    /// old neighbourhood).
    links_new: bool,
}

impl Graph {
    fn new(dimensions: usize, metric: Metric, m: usize, ef_construction: usize) -> Self {
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
            slots: HashMap::new(),
            entry: NONE,
            max_level: 0,
        }
    }

    fn block0(&self) -> usize {
        1 + 2 * self.m
    }

    fn block_upper(&self) -> usize {
        1 + self.m
    }

    fn capacity(&self, level: usize) -> usize {
        if level == 0 { 2 * self.m } else { self.m }
    }

    #[inline]
    fn links(&self, slot: u32, level: usize) -> &[u32] {
        let (block, at) = if level == 0 {
            (&self.links0[..], slot as usize * self.block0())
        } else {
            (
                &self.upper[slot as usize][..],
                (level - 1) * self.block_upper(),
            )
        };
        let count = block[at] as usize;
        &block[at + 1..at + 1 + count]
    }

    fn set_links(&mut self, slot: u32, level: usize, list: &[u32]) {
        let (block, at) = if level == 0 {
            let at = slot as usize * self.block0();
            (&mut self.links0[..], at)
        } else {
            let at = (level - 1) * self.block_upper();
            (&mut self.upper[slot as usize][..], at)
        };
        block[at] = list.len() as u32;
        block[at + 1..at + 1 + list.len()].copy_from_slice(list);
    }

    #[inline]
    fn between(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.metric {
            Metric::L2 => kernels::l2_squared(a, b),
            // Cosine over unit vectors, and inner product: both `1 - a·b`.
            Metric::Cosine | Metric::Ip => 1.0 - kernels::dot(a, b),
        }
    }

    #[inline]
    fn distance(&self, query: &[f32], slot: u32) -> f32 {
        self.between(query, self.vectors.get(slot))
    }

    /// The distance from `query` to `slot`'s vector: its f16 copy when `COARSE`, else the
    /// exact one.
    #[inline]
    fn distance_to<const COARSE: bool>(&self, query: &[f32], slot: u32) -> f32 {
        if !COARSE {
            return self.distance(query, slot);
        }
        let stored = self.coarse.get(slot);
        match self.metric {
            Metric::L2 => kernels::l2_squared_f16(query, stored),
            Metric::Cosine | Metric::Ip => 1.0 - kernels::dot_f16(query, stored),
        }
    }

    /// Starts loading `slot`'s vector: every line of its f16 copy when `COARSE`, else the
    /// first line of the exact one.
    ///
    /// Why every line of the f16 copy but one of the f32: measured on 100k x 128-d (ann
    /// bench, same run as hnswlib), all four lines of the f16 copy took QPS from 1.20x to
    /// 1.32x hnswlib's at recall 0.95 on one thread (1.19x to 1.34x at 0.99); for the f32
    /// vectors, prefetching 0, 1, 2, 4 or all 8 lines measured alike within the noise of our
    /// shared 2-core machine (about 15%), the stream prefetcher catching the rest.
    #[inline]
    fn prefetch<const COARSE: bool>(&self, slot: u32) {
        if COARSE {
            for line in self.coarse.get(slot).chunks(Slab::<f16>::PER_LINE) {
                kernels::prefetch(line);
            }
        } else {
            kernels::prefetch(self.vectors.get(slot));
        }
    }

    /// Greedy descent on one upper level: move to the nearest neighbour while it is nearer.
    fn greedy<const COARSE: bool>(&self, query: &[f32], mut at: Scored, level: usize) -> Scored {
        loop {
            let mut moved = false;
            let links = self.links(at.slot, level);
            // All loads first, as on level 0 (measured: +2% to +5% QPS at ef 16 to 64, where
            // the descent is a larger share of a search; noise at 128).
            for &n in links {
                self.prefetch::<COARSE>(n);
            }
            for &n in links {
                let distance = self.distance_to::<COARSE>(query, n);
                if distance < at.distance {
                    at = Scored { distance, slot: n };
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
    fn search_level<const COARSE: bool>(
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
        visited.first_visit(entry.slot);
        candidates.push(Reverse(entry));
        if !(skip_removed && self.removed[entry.slot as usize]) {
            results.push(entry);
        }
        let mut bound = results.peek().map_or(f32::INFINITY, |r| r.distance);
        while let Some(Reverse(nearest)) = candidates.pop() {
            if nearest.distance > bound && results.len() >= ef {
                break;
            }
            batch.clear();
            for &n in self.links(nearest.slot, level) {
                if visited.first_visit(n) {
                    self.prefetch::<COARSE>(n);
                    batch.push(n);
                }
            }
            for &n in batch.iter() {
                let distance = self.distance_to::<COARSE>(query, n);
                if results.len() < ef || distance < bound {
                    let found = Scored { distance, slot: n };
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
                let at = next.slot as usize * self.block0();
                kernels::prefetch(&self.links0[at..at + 1]);
            }
        }
    }

    /// The paper's neighbour heuristic: from `candidates` (nearest first, distances to the
    /// node being linked), keep up to `keep`, each only if it is nearer to that node than to
    /// every one already kept. This spreads links across directions instead of spending them
    /// all inside the nearest cluster. `vector_of` resolves slots (the node being inserted has
    /// none in the slab yet).
    fn select<'a>(
        &'a self,
        candidates: &[Scored],
        keep: usize,
        vector_of: impl Fn(u32) -> &'a [f32],
    ) -> Vec<u32> {
        if candidates.len() <= keep {
            return candidates.iter().map(|c| c.slot).collect();
        }
        let mut kept: Vec<u32> = Vec::with_capacity(keep);
        for c in candidates {
            if kept.len() >= keep {
                break;
            }
            let v = vector_of(c.slot);
            if kept
                .iter()
                .all(|&k| self.between(v, vector_of(k)) >= c.distance)
            {
                kept.push(c.slot);
            }
        }
        kept
    }

    /// Everything inserting `vector` will change, from the graph as it is: in tombstoned slot
    /// `reuse` at that slot's level, or in a new slot at `level`.
    fn plan_insert(
        &self,
        id: u64,
        vector: Vec<f32>,
        level: usize,
        reuse: Option<u32>,
        scratch: &mut Scratch,
    ) -> Plan {
        let level = reuse.map_or(level, |slot| usize::from(self.levels[slot as usize]));
        let mut plan = Plan {
            id,
            vector,
            level,
            reuse,
            own: vec![Vec::new(); level + 1],
            updates: Vec::new(),
        };
        if self.entry == NONE {
            return plan;
        }
        let new_slot = reuse.unwrap_or(PENDING);
        let query = &plan.vector[..];
        let vector_of = |slot: u32| {
            if slot == new_slot {
                query
            } else {
                self.vectors.get(slot)
            }
        };
        let mut pool: Vec<Scored> = Vec::with_capacity(4 * self.m + 1);
        // A reused slot's old neighbours choose again without it (it will hold another
        // vector), among their own neighbours and the old node's; the links below are then
        // made on top of those lists.
        let mut repaired: HashMap<(u32, usize), Vec<u32>> = HashMap::new();
        if let Some(old) = reuse {
            for l in 0..=level {
                let old_links = self.links(old, l);
                for &neighbour in old_links {
                    let base = self.vectors.get(neighbour);
                    pool.clear();
                    for &c in self.links(neighbour, l).iter().chain(old_links) {
                        if c != neighbour && c != old && !pool.iter().any(|p| p.slot == c) {
                            pool.push(Scored {
                                distance: self.between(base, self.vectors.get(c)),
                                slot: c,
                            });
                        }
                    }
                    pool.sort_unstable();
                    let list = self.select(&pool, self.capacity(l), |slot| self.vectors.get(slot));
                    repaired.insert((neighbour, l), list);
                }
            }
        }
        let mut at = Scored {
            distance: self.distance(query, self.entry),
            slot: self.entry,
        };
        for l in (level + 1..=self.max_level).rev() {
            at = self.greedy::<false>(query, at, l);
        }
        let mut found: Vec<Scored> = Vec::with_capacity(self.ef_construction + 1);
        let mut linked: Vec<Update> = Vec::new();
        for l in (0..=level.min(self.max_level)).rev() {
            self.search_level::<false>(query, at, self.ef_construction, l, false, scratch);
            found.clear();
            // The reused slot is found with its old vector: never its own neighbour.
            found.extend(scratch.results.drain().filter(|s| s.slot != new_slot));
            found.sort_unstable();
            let Some(&nearest) = found.first() else {
                continue;
            };
            at = nearest;
            let chosen = self.select(&found, self.m, vector_of);
            for &neighbour in &chosen {
                let theirs: Vec<u32> = repaired
                    .remove(&(neighbour, l))
                    .unwrap_or_else(|| self.links(neighbour, l).to_vec())
                    .into_iter()
                    .filter(|&n| n != new_slot)
                    .collect();
                let list = self.link_into(neighbour, theirs, new_slot, l, &vector_of, &mut pool);
                linked.push(Update {
                    slot: neighbour,
                    level: l,
                    read: self.links(neighbour, l).to_vec(),
                    list,
                    links_new: true,
                });
            }
            plan.own[l] = chosen;
        }
        plan.updates = repaired
            .into_iter()
            .map(|((slot, level), list)| Update {
                slot,
                level,
                read: self.links(slot, level).to_vec(),
                list,
                links_new: false,
            })
            .chain(linked)
            .collect();
        plan
    }

    /// `theirs` (`neighbour`'s list at `level`) with `new_slot` linked into it: appended while
    /// there is room, else the heuristic chooses again among them and the new node.
    /// `vector_of` resolves slots (the new node may not be in the slab yet); `pool` is scratch.
    fn link_into<'a>(
        &'a self,
        neighbour: u32,
        mut theirs: Vec<u32>,
        new_slot: u32,
        level: usize,
        vector_of: &impl Fn(u32) -> &'a [f32],
        pool: &mut Vec<Scored>,
    ) -> Vec<u32> {
        let capacity = self.capacity(level);
        if theirs.len() < capacity {
            theirs.push(new_slot);
            return theirs;
        }
        let base = self.vectors.get(neighbour);
        pool.clear();
        pool.extend(theirs.iter().chain([&new_slot]).map(|&n| Scored {
            distance: self.between(base, vector_of(n)),
            slot: n,
        }));
        pool.sort_unstable();
        self.select(pool, capacity, vector_of)
    }

    /// `neighbour`'s list at `level` as it is now, with `new_slot` (already in the slab)
    /// linked into it: for a plan whose copy of the list another insert changed meanwhile.
    fn relink(&self, neighbour: u32, level: usize, new_slot: u32) -> Vec<u32> {
        let list = self.links(neighbour, level).to_vec();
        if list.contains(&new_slot) || neighbour == new_slot {
            return list;
        }
        let vector_of = |slot: u32| self.vectors.get(slot);
        self.link_into(
            neighbour,
            list,
            new_slot,
            level,
            &vector_of,
            &mut Vec::new(),
        )
    }

    /// Applies a plan. A plan that reuses a slot, or raises the top level, was made alone
    /// (see [`GraphAnn::insert`]), so the graph is still the one it read. Other plans may have
    /// been made beside each other: each takes the next new slot now, and a neighbour list
    /// that another insert changed since the plan read it is made again from what it holds
    /// now, so no insert's links are lost to another's. (Two nodes inserted side by side do
    /// not see each other while choosing their own neighbours, as in hnswlib's parallel
    /// build; each is still linked from the nodes it chose.)
    fn apply(&mut self, plan: Plan) {
        let slot = match plan.reuse {
            Some(slot) => {
                // The writer planned against this graph: its free slot is still the last.
                let taken = self.free.pop();
                debug_assert_eq!(taken, Some(slot));
                self.vectors.set(slot, &plan.vector);
                self.coarse.set(slot, &to_f16(&plan.vector));
                self.ids[slot as usize] = plan.id;
                self.removed[slot as usize] = false;
                self.tombstones -= 1;
                slot
            }
            None => {
                let slot = self.ids.len() as u32;
                self.vectors.push(&plan.vector);
                self.coarse.push(&to_f16(&plan.vector));
                self.ids.push(plan.id);
                self.levels.push(plan.level as u8);
                self.removed.push(false);
                self.grow_links0(1);
                self.links0.resize(self.links0.len() + self.block0(), 0);
                self.upper.push(vec![0; plan.level * self.block_upper()]);
                slot
            }
        };
        for (l, list) in plan.own.iter().enumerate() {
            self.set_links(slot, l, list);
        }
        for update in plan.updates {
            let list = if self.links(update.slot, update.level) == &update.read[..] {
                let mut list = update.list;
                for n in &mut list {
                    if *n == PENDING {
                        *n = slot;
                    }
                }
                list
            } else if update.links_new {
                self.relink(update.slot, update.level, slot)
            } else {
                // A repair only: made alone, so its list cannot have changed.
                debug_assert!(false, "a reused slot's repair raced another insert");
                continue;
            };
            self.set_links(update.slot, update.level, &list);
        }
        if let Some(old) = self.slots.insert(plan.id, slot) {
            self.tombstone(old);
        }
        if self.entry == NONE || plan.level > self.max_level {
            self.entry = slot;
            self.max_level = plan.level;
        }
    }

    /// Makes room in `links0` for `slots` more blocks, doubling, with huge pages asked for
    /// (see `kernels::advise_huge_pages`) before the new memory is touched.
    fn grow_links0(&mut self, slots: usize) {
        let wanted = self.links0.len() + slots * self.block0();
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

    fn tombstone(&mut self, slot: u32) {
        if !self.removed[slot as usize] {
            self.removed[slot as usize] = true;
            self.tombstones += 1;
            self.free.push(slot);
        }
    }

    fn search(&self, query: &[f32], k: usize, ef: usize, scratch: &mut Scratch) -> Vec<Neighbor> {
        if self.entry == NONE || k == 0 {
            return Vec::new();
        }
        let mut at = Scored {
            distance: self.distance_to::<true>(query, self.entry),
            slot: self.entry,
        };
        for l in (1..=self.max_level).rev() {
            at = self.greedy::<true>(query, at, l);
        }
        self.search_level::<true>(query, at, ef.max(k), 0, true, scratch);
        // The walk measured f16 copies: the best `ef` it found are ranked again by their
        // exact vectors, loads first as in the walk.
        for s in scratch.results.iter() {
            kernels::prefetch(self.vectors.get(s.slot));
        }
        let mut found: Vec<Scored> = scratch
            .results
            .drain()
            .map(|s| Scored {
                distance: self.distance(query, s.slot),
                slot: s.slot,
            })
            .collect();
        found.sort_unstable();
        found
            .iter()
            .take(k)
            .map(|s| Neighbor {
                id: self.ids[s.slot as usize],
                distance: s.distance,
            })
            .collect()
    }
}

/// Our HNSW graph; see the module docs.
pub struct GraphAnn {
    graph: RwLock<Graph>,
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

/// `vector` at half width, each value rounded to the nearest f16.
fn to_f16(vector: &[f32]) -> Vec<f16> {
    vector.iter().map(|&x| f16::from_f32(x)).collect()
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

    fn from_graph(graph: Graph, params: HnswParams) -> Self {
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

    /// Slots holding removed or replaced vectors, still in the graph.
    pub fn tombstones(&self) -> usize {
        self.graph.read().map(|g| g.tombstones).unwrap_or(0)
    }

    /// Slots in the graph, live and tombstoned.
    #[cfg(test)]
    fn slots(&self) -> usize {
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
    /// another whole plan. Measured why: a thread that sleeps on the lock is woken too late
    /// on this machine's VM (its CPU idles and must be woken), another thread takes the lock
    /// meanwhile, and two writers built no faster than one. Bounded: after
    /// [`APPLY_WAIT`] it plans anyway.
    fn wait_for_applies(&self) {
        let started = Instant::now();
        while self.applying.load(AtomicOrdering::Acquire) > 0 && started.elapsed() < APPLY_WAIT {
            std::thread::yield_now();
        }
    }

    /// Applies `plan` under the write lock, counted in `applying` meanwhile; the lock is tried
    /// without sleeping for up to [`APPLY_WAIT`], then waited for.
    fn apply_in_step(&self, plan: Plan) -> Result<(), IndexError> {
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

/// Whether the file at `path` is one of ours (begins with our magic). usearch's files have
/// no magic at their start (its header follows the vectors), so this is how the two are told
/// apart (see [`super::open::load`]).
pub fn is_graph_file(path: &Path) -> Result<bool, IndexError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(file::MAGIC.len());
    std::fs::File::open(path)
        .and_then(|f| f.take(file::MAGIC.len() as u64).read_to_end(&mut head))
        .map_err(|source| IndexError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(head == file::MAGIC)
}

/// How long a planner waits for others' applies, or for the write lock, before it sleeps on
/// the lock (see [`GraphAnn::wait_for_applies`]): a few plans' length.
const APPLY_WAIT: Duration = Duration::from_millis(2);

/// Largest `M` accepted (a file claiming more is corrupt).
const MAX_CONNECTIVITY: usize = 256;

fn random_level(rng: &mut SmallRng, m: usize) -> usize {
    // The paper's exponentially decaying level distribution with mL = 1/ln(M).
    let uniform = 1.0 - rng.random::<f64>(); // in (0, 1]
    let level = (-uniform.ln() / (m as f64).ln()).floor();
    (level as usize).min(MAX_LEVEL)
}

impl Ann for GraphAnn {
    /// Inserts of distinct ids may run side by side (up to [`Ann::insert_threads`]): each
    /// plans under the graph's read lock, beside searches and the other inserts, and applies
    /// its plan under the write lock (see [`Graph::apply`] for how plans made side by side
    /// are reconciled). An insert runs alone when it changes what the others' plans rely on:
    /// the first node, a node above the top level (the entry point moves), or one that takes a
    /// tombstoned slot (its old neighbourhood is repaired from lists nobody else may change).
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
            // Side by side, a slot freed meanwhile is left for an insert that runs alone.
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
        if let Some(slot) = graph.slots.remove(&id) {
            graph.tombstone(slot);
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
            .map(|g| g.slots.contains_key(&id))
            .unwrap_or(false)
    }

    fn len(&self) -> usize {
        self.graph.read().map(|g| g.slots.len()).unwrap_or(0)
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

/// The file format, version 1, all little-endian:
///
/// ```text
/// magic "VRHNSW\0\0" | version u32 | dimensions u32 | metric u8 | M u32 | ef_construction u32
/// slots u64 | entry u32 (u32::MAX when empty) | max_level u32
/// per slot:  id u64 | level u8 | removed u8
/// per slot:  level-0 count u32 | that many slots u32
/// per slot, per level 1..=level: count u32 | that many slots u32
/// per slot:  dimensions f32 (the stored vector: normalised for cosine)
/// CRC-32 (IEEE) of everything before it, u32
/// ```
mod file {
    use super::{Graph, MAX_CONNECTIVITY, MAX_LEVEL, Metric, NONE, to_f16};

    pub(super) const MAGIC: &[u8; 8] = b"VRHNSW\0\0";
    const VERSION: u32 = 1;

    fn metric_code(metric: Metric) -> u8 {
        match metric {
            Metric::Cosine => 0,
            Metric::L2 => 1,
            Metric::Ip => 2,
        }
    }

    pub(super) fn encode(graph: &Graph) -> Vec<u8> {
        let slots = graph.ids.len();
        let mut out = Vec::with_capacity(64 + slots * (14 + 4 * (graph.dimensions + 2 * graph.m)));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(graph.dimensions as u32).to_le_bytes());
        out.push(metric_code(graph.metric));
        out.extend_from_slice(&(graph.m as u32).to_le_bytes());
        out.extend_from_slice(&(graph.ef_construction as u32).to_le_bytes());
        out.extend_from_slice(&(slots as u64).to_le_bytes());
        out.extend_from_slice(&graph.entry.to_le_bytes());
        out.extend_from_slice(&(graph.max_level as u32).to_le_bytes());
        for slot in 0..slots {
            out.extend_from_slice(&graph.ids[slot].to_le_bytes());
            out.push(graph.levels[slot]);
            out.push(u8::from(graph.removed[slot]));
        }
        for slot in 0..slots as u32 {
            for level in 0..=graph.levels[slot as usize] as usize {
                let links = graph.links(slot, level);
                out.extend_from_slice(&(links.len() as u32).to_le_bytes());
                for n in links {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        for slot in 0..slots as u32 {
            for x in graph.vectors.get(slot) {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads fields off the front of a byte slice; running out is an error, not a panic.
    struct Reader<'a> {
        bytes: &'a [u8],
    }

    impl Reader<'_> {
        fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
            let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
                return Err("truncated".into());
            };
            self.bytes = rest;
            Ok(*head)
        }
        fn u8(&mut self) -> Result<u8, String> {
            Ok(self.take::<1>()?[0])
        }
        fn u32(&mut self) -> Result<u32, String> {
            Ok(u32::from_le_bytes(self.take()?))
        }
        fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.take()?))
        }
        fn f32(&mut self) -> Result<f32, String> {
            Ok(f32::from_le_bytes(self.take()?))
        }
    }

    pub(super) fn decode(bytes: &[u8], dimensions: usize, metric: Metric) -> Result<Graph, String> {
        let mut r = Reader { bytes };
        if r.take::<8>().ok().as_ref() != Some(MAGIC) {
            return Err("not a vecrig HNSW graph file (bad magic)".into());
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!(
                "format version {version}, this build reads version {VERSION}"
            ));
        }
        let width = r.u32()? as usize;
        if width != dimensions {
            return Err(format!(
                "written for {width} dimensions, the index has {dimensions}"
            ));
        }
        let code = r.u8()?;
        if code != metric_code(metric) {
            let written = [Metric::Cosine, Metric::L2, Metric::Ip]
                .into_iter()
                .find(|m| metric_code(*m) == code)
                .map_or_else(|| format!("unknown metric code {code}"), |m| m.to_string());
            return Err(format!(
                "written for metric {written}, the index uses {metric}"
            ));
        }
        // Everything above is checked before the CRC so that a file of another shape is
        // named as such; from here on, a mismatch means damage.
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err("truncated".into());
        };
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err("checksum mismatch: the file is truncated or corrupt".into());
        }
        let mut r = Reader {
            bytes: &body[8 + 4 + 4 + 1..],
        };
        let m = r.u32()? as usize;
        if !(2..=MAX_CONNECTIVITY).contains(&m) {
            return Err(format!("connectivity {m} out of range"));
        }
        let ef_construction = r.u32()? as usize;
        let slots = r.u64()?;
        // Each slot needs at least its id, level, flags, level-0 count and vector: refuse a
        // count the file cannot hold before allocating for it.
        let least = 8 + 1 + 1 + 4 + 4 * dimensions as u64;
        if slots >= u64::from(NONE) || slots.saturating_mul(least) > body.len() as u64 {
            return Err(format!("{slots} slots do not fit in the file"));
        }
        let slots = slots as usize;
        let entry = r.u32()?;
        let max_level = r.u32()? as usize;
        let mut graph = Graph::new(dimensions, metric, m, ef_construction.max(1));
        graph.ids.reserve(slots);
        graph.levels.reserve(slots);
        graph.removed.reserve(slots);
        for _ in 0..slots {
            let id = r.u64()?;
            let level = r.u8()?;
            if level as usize > MAX_LEVEL {
                return Err(format!("level {level} above {MAX_LEVEL}"));
            }
            let removed = match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(format!("bad removed flag {other}")),
            };
            graph.ids.push(id);
            graph.levels.push(level);
            graph.removed.push(removed);
            if removed {
                graph.tombstones += 1;
                graph.free.push((graph.ids.len() - 1) as u32);
            } else if graph
                .slots
                .insert(id, (graph.ids.len() - 1) as u32)
                .is_some()
            {
                return Err(format!("id {id} is live in two slots"));
            }
        }
        if slots == 0 {
            if entry != NONE {
                return Err("an empty graph with an entry point".into());
            }
        } else if entry as usize >= slots || graph.levels[entry as usize] as usize != max_level {
            return Err("entry point is not a slot of the top level".into());
        }
        graph.entry = entry;
        graph.max_level = if slots == 0 { 0 } else { max_level };
        graph.grow_links0(slots);
        graph.links0.resize(slots * graph.block0(), 0);
        graph.upper.reserve(slots);
        let mut list = Vec::with_capacity(2 * m);
        for slot in 0..slots as u32 {
            let level = graph.levels[slot as usize] as usize;
            graph.upper.push(vec![0; level * graph.block_upper()]);
            for l in 0..=level {
                let count = r.u32()? as usize;
                if count > graph.capacity(l) {
                    return Err(format!("slot {slot} has {count} links on level {l}"));
                }
                list.clear();
                for _ in 0..count {
                    let n = r.u32()?;
                    if n as usize >= slots || (graph.levels[n as usize] as usize) < l {
                        return Err(format!("slot {slot} links to {n}, not a node of level {l}"));
                    }
                    list.push(n);
                }
                graph.set_links(slot, l, &list);
            }
        }
        if r.bytes.len() != slots * dimensions * 4 {
            return Err("vector section has the wrong length".into());
        }
        let mut vector = vec![0.0f32; dimensions];
        for _ in 0..slots {
            for x in vector.iter_mut() {
                *x = r.f32()?;
            }
            graph.vectors.push(&vector);
            graph.coarse.push(&to_f16(&vector));
        }
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::store::{Payload, PointStore};
    use proptest::prelude::{
        ProptestConfig, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
    };
    use rand::SeedableRng;
    use vecrig::synthetic::Synthetic;

    fn params() -> HnswParams {
        HnswParams::default()
    }

    fn clustered(dims: usize, n: u64, metric: Metric) -> (Synthetic, GraphAnn) {
        let data = Synthetic::new(dims, 32, 3);
        let ann = GraphAnn::new(dims, metric, params()).expect("graph");
        for id in 0..n {
            ann.insert(id, &data.point(id).vector).expect("insert");
        }
        (data, ann)
    }

    /// recall@10 of the graph against the exact scan, on a 10k clustered set (as for usearch).
    #[test]
    fn recall_at_10_against_exact_scan() {
        let dims = 64;
        let (data, ann) = clustered(dims, 10_000, Metric::Cosine);
        let mut store = PointStore::new(dims, Metric::Cosine);
        for id in 0..10_000 {
            store.upsert(id, &data.point(id).vector, Payload::new());
        }
        assert_eq!(ann.len(), 10_000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (mut found, mut total) = (0usize, 0usize);
        for _ in 0..200 {
            let q = data.query_vector(&mut rng);
            let exact = store.exact_search(&q, 10);
            let truth: Vec<u64> = exact.iter().map(|n| n.id).collect();
            let got = ann.search(&q, 10, 64).expect("search");
            assert_eq!(got.len(), 10);
            assert!(got.windows(2).all(|w| w[0].distance <= w[1].distance));
            // Distances agree between the two paths.
            if got[0].id == exact[0].id {
                assert!((got[0].distance - exact[0].distance).abs() < 1e-3);
            }
            found += got.iter().filter(|n| truth.contains(&n.id)).count();
            total += truth.len();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.95, "recall@10 = {recall:.3}");
    }

    #[test]
    fn every_point_is_found_by_its_own_vector() {
        for metric in [Metric::Cosine, Metric::L2] {
            let (data, ann) = clustered(32, 3000, metric);
            for id in 0..3000 {
                let hits = ann.search(&data.point(id).vector, 1, 32).expect("search");
                // Under cosine and l2 nothing is nearer to a vector than itself.
                assert_eq!(hits[0].id, id, "{metric}: {hits:?}");
                assert!(hits[0].distance.abs() < 1e-4, "{metric}: {hits:?}");
            }
        }
    }

    /// Inserts side by side (the server's indexers), with searches running beside them:
    /// every link is a real slot, every point is found by its own vector, recall holds.
    #[test]
    fn inserts_side_by_side_keep_every_point_findable() {
        let (dims, n, writers) = (32, 6000u64, 4u64);
        let data = Synthetic::new(dims, 32, 3);
        let ann = GraphAnn::new(
            dims,
            Metric::L2,
            HnswParams {
                insert_threads: writers as usize,
                ..params()
            },
        )
        .expect("graph");
        assert_eq!(ann.insert_threads(), writers as usize);
        std::thread::scope(|scope| {
            for first in 0..writers {
                let (ann, data) = (&ann, &data);
                scope.spawn(move || {
                    for id in (first..n).step_by(writers as usize) {
                        ann.insert(id, &data.point(id).vector).expect("insert");
                    }
                });
            }
            let (ann, data) = (&ann, &data);
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(4);
                for _ in 0..500 {
                    let hits = ann
                        .search(&data.query_vector(&mut rng), 10, 32)
                        .expect("search");
                    assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
                }
            });
        });
        assert_eq!(ann.len(), n as usize);
        assert_eq!(ann.slots(), n as usize, "no slot taken twice or skipped");
        {
            let graph = ann.graph.read().expect("graph");
            for slot in 0..n as u32 {
                for l in 0..=usize::from(graph.levels[slot as usize]) {
                    let links = graph.links(slot, l);
                    assert!(links.len() <= graph.capacity(l));
                    for (i, &to) in links.iter().enumerate() {
                        assert!(to < n as u32 && to != slot, "{slot} level {l} links {to}");
                        assert!(!links[..i].contains(&to), "{slot} links {to} twice");
                    }
                }
            }
        }
        for id in 0..n {
            let hits = ann.search(&data.point(id).vector, 1, 32).expect("search");
            assert_eq!(hits[0].id, id, "{hits:?}");
        }
        let mut store = PointStore::new(dims, Metric::L2);
        for id in 0..n {
            store.upsert(id, &data.point(id).vector, Payload::new());
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (mut found, mut total) = (0usize, 0usize);
        for _ in 0..200 {
            let q = data.query_vector(&mut rng);
            let truth: Vec<u64> = store.exact_search(&q, 10).iter().map(|h| h.id).collect();
            let got = ann.search(&q, 10, 64).expect("search");
            found += got.iter().filter(|h| truth.contains(&h.id)).count();
            total += truth.len();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.95, "recall@10 = {recall:.3}");
    }

    #[test]
    fn remove_hides_a_point_and_reinsert_replaces_it() {
        let (data, ann) = clustered(16, 2000, Metric::L2);
        let v = data.point(7).vector;
        ann.remove(7).expect("remove");
        ann.remove(7).expect("absent ids are ignored");
        assert!(!ann.contains(7));
        assert_eq!(ann.len(), 1999);
        assert_eq!(ann.tombstones(), 1);
        let hits = ann.search(&v, 10, 64).expect("search");
        assert_eq!(
            hits.len(),
            10,
            "tombstones are traversed, results still full"
        );
        assert!(hits.iter().all(|h| h.id != 7));

        // Re-inserting an id replaces its vector: found at the new place, not the old.
        let far = vec![1000.0; 16];
        ann.insert(8, &far).expect("replace");
        assert_eq!(ann.len(), 1999);
        // 8 took 7's tombstoned slot, and left its own as the one tombstone.
        assert_eq!(ann.tombstones(), 1);
        assert_eq!(ann.slots(), 2000, "no slot added");
        let hits = ann.search(&far, 1, 16).expect("search");
        assert_eq!((hits[0].id, hits[0].distance), (8, 0.0));
        let old = data.point(8).vector;
        let hits = ann.search(&old, 10, 64).expect("search");
        assert!(hits.iter().all(|h| h.id != 8), "the old vector is gone");

        // A removed id comes back with an insert.
        ann.insert(7, &v).expect("insert again");
        assert!(ann.contains(7));
        assert_eq!(ann.search(&v, 1, 16).expect("search")[0].id, 7);
    }

    #[test]
    fn rewrites_reuse_tombstoned_slots_and_keep_recall() {
        // Every point rewritten three times with a new vector (another point of the same
        // clustered distribution), and a tenth removed and inserted again: the graph stays at
        // its live size, and searches stay as good as on a graph built once.
        let (data, ann) = clustered(16, 2000, Metric::L2);
        let live = |round: u64, id: u64| data.point((id * 7 + round * 2003) % 6000).vector;
        for round in 1..=3 {
            for id in 0..2000 {
                ann.insert(id, &live(round, id)).expect("rewrite");
            }
            for id in (0..2000).step_by(10) {
                ann.remove(id).expect("remove");
            }
            for id in (0..2000).step_by(10) {
                ann.insert(id, &live(round, id)).expect("insert again");
            }
        }
        assert_eq!(ann.len(), 2000);
        assert!(
            ann.slots() <= 2001,
            "tombstoned slots are reused: {} slots for 2000 points",
            ann.slots()
        );
        // Recall@10 against an exact scan of the current vectors.
        let current: Vec<(u64, Vec<f32>)> = (0..2000).map(|id| (id, live(3, id))).collect();
        let fresh = GraphAnn::new(16, Metric::L2, params()).expect("graph");
        for (id, v) in &current {
            fresh.insert(*id, v).expect("insert");
        }
        let recall = |ann: &GraphAnn| {
            let queries = 200;
            let mut hits_found = 0;
            for q in 0..queries {
                let query = data.point(10_000 + q).vector;
                let mut exact: Vec<(f32, u64)> = current
                    .iter()
                    .map(|(id, v)| (kernels::l2_squared(&query, v), *id))
                    .collect();
                exact.sort_by(|a, b| a.0.total_cmp(&b.0));
                let truth: Vec<u64> = exact.iter().take(10).map(|e| e.1).collect();
                let found = ann.search(&query, 10, 32).expect("search");
                hits_found += found.iter().filter(|h| truth.contains(&h.id)).count();
            }
            hits_found as f64 / (queries as f64 * 10.0)
        };
        let (rewritten, built_once) = (recall(&ann), recall(&fresh));
        assert!(
            rewritten >= built_once - 0.03,
            "recall@10 after rewrites {rewritten}, built once {built_once}"
        );
    }

    #[test]
    fn wrong_width_is_an_error() {
        let ann = GraphAnn::new(4, Metric::L2, params()).expect("graph");
        assert!(ann.insert(1, &[1.0, 2.0]).is_err());
        assert!(ann.search(&[1.0; 5], 1, 8).is_err());
        assert!(ann.search(&[1.0; 4], 1, 8).expect("empty").is_empty());
    }

    #[test]
    fn save_and_load_give_identical_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("graph");
        let (data, ann) = clustered(24, 3000, Metric::Cosine);
        ann.remove(3).expect("remove");
        ann.insert(4, &data.point(5).vector).expect("replace");
        ann.save(&path).expect("save");
        let loaded = GraphAnn::load(&path, 24, Metric::Cosine, params()).expect("load");
        assert_eq!(loaded.len(), ann.len());
        assert_eq!(loaded.tombstones(), ann.tombstones());
        assert!(!loaded.contains(3) && loaded.contains(4));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let q = data.query_vector(&mut rng);
            assert_eq!(
                loaded.search(&q, 10, 40).expect("search"),
                ann.search(&q, 10, 40).expect("search")
            );
        }
        // Both keep working as indexes after the round trip.
        loaded
            .insert(99_999, &data.point(99_999).vector)
            .expect("insert");
        assert_eq!(
            loaded.search(&data.point(99_999).vector, 1, 16).expect("s")[0].id,
            99_999
        );
        // An empty graph round-trips too.
        let empty = GraphAnn::new(24, Metric::Cosine, params()).expect("graph");
        empty.save(&path).expect("save");
        let loaded = GraphAnn::load(&path, 24, Metric::Cosine, params()).expect("load");
        assert!(loaded.is_empty());
    }

    #[test]
    fn a_file_of_another_shape_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("graph");
        let (_, ann) = clustered(8, 100, Metric::L2);
        ann.save(&path).expect("save");
        let err = GraphAnn::load(&path, 9, Metric::L2, params()).expect_err("width");
        assert!(err.to_string().contains("8 dimensions"), "{err}");
        let err = GraphAnn::load(&path, 8, Metric::Cosine, params()).expect_err("metric");
        assert!(err.to_string().contains("metric l2"), "{err}");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[8] = 2; // version
        std::fs::write(&path, &bytes).expect("write");
        let err = GraphAnn::load(&path, 8, Metric::L2, params()).expect_err("version");
        assert!(err.to_string().contains("version 2"), "{err}");
        std::fs::write(&path, b"usearch, probably").expect("write");
        let err = GraphAnn::load(&path, 8, Metric::L2, params()).expect_err("magic");
        assert!(err.to_string().contains("magic"), "{err}");
        let missing = dir.path().join("missing");
        assert!(matches!(
            GraphAnn::load(&missing, 8, Metric::L2, params()),
            Err(IndexError::Io { .. })
        ));
    }

    #[test]
    fn a_truncated_or_corrupt_file_is_an_error_not_a_panic() {
        let (_, ann) = clustered(8, 300, Metric::L2);
        let bytes = {
            let graph = ann.graph.read().expect("lock");
            file::encode(&graph)
        };
        assert!(file::decode(&bytes, 8, Metric::L2).is_ok());
        for len in (0..bytes.len()).step_by(7) {
            assert!(file::decode(&bytes[..len], 8, Metric::L2).is_err(), "{len}");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..500 {
            let mut damaged = bytes.clone();
            let at = rng.random_range(0..damaged.len());
            damaged[at] ^= 1 << rng.random_range(0..8);
            assert!(file::decode(&damaged, 8, Metric::L2).is_err(), "byte {at}");
        }
    }

    /// A corrupt file whose checksum was recomputed (so only the structural checks stand
    /// between it and the graph) is still refused or loaded, never a panic.
    #[test]
    fn structural_damage_behind_a_valid_checksum_does_not_panic() {
        let (_, ann) = clustered(4, 200, Metric::L2);
        let bytes = {
            let graph = ann.graph.read().expect("lock");
            file::encode(&graph)
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for _ in 0..2000 {
            let mut damaged = bytes[..bytes.len() - 4].to_vec();
            let at = rng.random_range(17..damaged.len());
            damaged[at] = rng.random();
            let crc = crc32fast::hash(&damaged);
            damaged.extend_from_slice(&crc.to_le_bytes());
            if let Ok(graph) = file::decode(&damaged, 4, Metric::L2) {
                let loaded = GraphAnn::from_graph(
                    graph,
                    HnswParams {
                        search_threads: 1,
                        ..params()
                    },
                );
                let _ = loaded.search(&[1.0, 2.0, 3.0, 4.0], 5, 16).expect("search");
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, [i8; 3]),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..40, any::<[i8; 3]>()).prop_map(|(id, v)| Op::Insert(id, v)),
            1 => (0u64..40).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever mix of inserts, rewrites and removals: the graph holds exactly the live
        /// ids, and a search answers only live ids, each once, nearest first, at the distance
        /// of its current vector; and as many as asked for (tombstones keep it navigable).
        #[test]
        fn answers_only_live_ids_at_their_current_distance(
            ops in proptest::collection::vec(op(), 1..120),
            query in any::<[i8; 3]>(),
        ) {
            let ann = GraphAnn::new(3, Metric::L2, HnswParams {
                connectivity: 4,
                ef_construction: 16,
                search_threads: 1,
                ..HnswParams::default()
            }).expect("graph");
            let mut model: HashMap<u64, Vec<f32>> = HashMap::new();
            for op in &ops {
                match op {
                    Op::Insert(id, v) => {
                        let v: Vec<f32> = v.iter().map(|&x| f32::from(x)).collect();
                        ann.insert(*id, &v).expect("insert");
                        model.insert(*id, v);
                    }
                    Op::Remove(id) => {
                        ann.remove(*id).expect("remove");
                        model.remove(id);
                    }
                }
            }
            prop_assert_eq!(ann.len(), model.len());
            for id in 0..40 {
                prop_assert_eq!(ann.contains(id), model.contains_key(&id));
            }
            let query: Vec<f32> = query.iter().map(|&x| f32::from(x)).collect();
            let hits = ann.search(&query, 5, 200).expect("search");
            let mut ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), hits.len(), "each id once");
            prop_assert_eq!(hits.len(), model.len().min(5));
            prop_assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
            for hit in &hits {
                let v = model.get(&hit.id).expect("a hit is live");
                prop_assert_eq!(crate::index::distance::l2_squared_portable(v, &query), hit.distance);
            }
        }
    }
}
