//! Insert planning: an insert's neighbours chosen under the read lock into an
//! [`InsertPlan`], applied under the write lock and reconciled with the plans applied
//! meanwhile; and the level an insert is drawn at.

use std::collections::HashMap;

use rand::Rng;
use rand::rngs::SmallRng;

use super::nodes::{Graph, MAX_LEVEL, NONE};
use super::scratch::{Scored, Scratch};
use super::slab::to_f16;

/// The row of the node a plan inserts when that row is only known once the plan is applied
/// (a new row at the end, whose number depends on the inserts applied meanwhile).
pub(super) const PENDING: u32 = u32::MAX - 1;
/// The seed of the level generator: the same inserts build the same graph.
pub(super) const LEVEL_SEED: u64 = 0x5eed_0016;

/// What an insert will change, computed under the read lock (see module docs).
pub(super) struct InsertPlan {
    pub(super) id: u64,
    pub(super) vector: Vec<f32>,
    pub(super) level: usize,
    /// The tombstoned row the node takes (`None`: a new row at the end).
    pub(super) reuse: Option<u32>,
    /// The new node's own neighbours, per level from 0.
    pub(super) own: Vec<Vec<u32>>,
    /// Existing nodes' new neighbour lists.
    pub(super) updates: Vec<Update>,
}

/// One existing node's new neighbour list at one level, and what it was made from.
pub(super) struct Update {
    pub(super) row: u32,
    pub(super) level: usize,
    /// The list as the plan read it: if another insert changed it before this plan is
    /// applied, the new list is made again from the current one (see [`Graph::apply`]).
    pub(super) read: Vec<u32>,
    /// The new list; [`PENDING`] stands for the inserted node's row.
    pub(super) list: Vec<u32>,
    /// Whether the new list links the inserted node (else it only repairs a reused row's
    /// old neighbourhood).
    pub(super) links_new: bool,
}

impl Graph {
    /// The paper's neighbour heuristic: from `candidates` (nearest first, distances to the
    /// node being linked), keep up to `keep`, each only if it is nearer to that node than to
    /// every one already kept. This spreads links across directions instead of spending them
    /// all inside the nearest cluster. `vector_of` resolves rows (the node being inserted has
    /// none in the slab yet).
    fn select<'a>(
        &'a self,
        candidates: &[Scored],
        keep: usize,
        vector_of: impl Fn(u32) -> &'a [f32],
    ) -> Vec<u32> {
        if candidates.len() <= keep {
            return candidates.iter().map(|c| c.row).collect();
        }
        let mut kept: Vec<u32> = Vec::with_capacity(keep);
        for c in candidates {
            if kept.len() >= keep {
                break;
            }
            let v = vector_of(c.row);
            if kept
                .iter()
                .all(|&k| self.between(v, vector_of(k)) >= c.distance)
            {
                kept.push(c.row);
            }
        }
        kept
    }

    /// Everything inserting `vector` will change, from the graph as it is: in tombstoned row
    /// `reuse` at that row's level, or in a new row at `level`.
    pub(super) fn plan_insert(
        &self,
        id: u64,
        vector: Vec<f32>,
        level: usize,
        reuse: Option<u32>,
        scratch: &mut Scratch,
    ) -> InsertPlan {
        let level = reuse.map_or(level, |row| usize::from(self.levels[row as usize]));
        let mut plan = InsertPlan {
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
        let new_row = reuse.unwrap_or(PENDING);
        let query = &plan.vector[..];
        let vector_of = |row: u32| {
            if row == new_row {
                query
            } else {
                self.vectors.get(row)
            }
        };
        let mut pool: Vec<Scored> = Vec::with_capacity(4 * self.m + 1);
        // A reused row's old neighbours choose again without it (it will hold another
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
                        if c != neighbour && c != old && !pool.iter().any(|p| p.row == c) {
                            pool.push(Scored {
                                distance: self.between(base, self.vectors.get(c)),
                                row: c,
                            });
                        }
                    }
                    pool.sort_unstable();
                    let list = self.select(&pool, self.capacity(l), |row| self.vectors.get(row));
                    repaired.insert((neighbour, l), list);
                }
            }
        }
        let mut at = Scored {
            distance: self.distance(query, self.entry),
            row: self.entry,
        };
        for l in (level + 1..=self.max_level).rev() {
            at = self.greedy::<false>(query, at, l);
        }
        let mut found: Vec<Scored> = Vec::with_capacity(self.ef_construction + 1);
        let mut linked: Vec<Update> = Vec::new();
        for l in (0..=level.min(self.max_level)).rev() {
            self.search_level::<false>(query, at, self.ef_construction, l, false, scratch);
            found.clear();
            // The reused row is found with its old vector: never its own neighbour.
            found.extend(scratch.results.drain().filter(|s| s.row != new_row));
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
                    .filter(|&n| n != new_row)
                    .collect();
                let list = self.link_into(neighbour, theirs, new_row, l, &vector_of, &mut pool);
                linked.push(Update {
                    row: neighbour,
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
            .map(|((row, level), list)| Update {
                row,
                level,
                read: self.links(row, level).to_vec(),
                list,
                links_new: false,
            })
            .chain(linked)
            .collect();
        plan
    }

    /// `theirs` (`neighbour`'s list at `level`) with `new_row` linked into it: appended while
    /// there is room, else the heuristic chooses again among them and the new node.
    /// `vector_of` resolves rows (the new node may not be in the slab yet); `pool` is scratch.
    pub(super) fn link_into<'a>(
        &'a self,
        neighbour: u32,
        mut theirs: Vec<u32>,
        new_row: u32,
        level: usize,
        vector_of: &impl Fn(u32) -> &'a [f32],
        pool: &mut Vec<Scored>,
    ) -> Vec<u32> {
        let capacity = self.capacity(level);
        if theirs.len() < capacity {
            theirs.push(new_row);
            return theirs;
        }
        let base = self.vectors.get(neighbour);
        pool.clear();
        pool.extend(theirs.iter().chain([&new_row]).map(|&n| Scored {
            distance: self.between(base, vector_of(n)),
            row: n,
        }));
        pool.sort_unstable();
        self.select(pool, capacity, vector_of)
    }

    /// `neighbour`'s list at `level` as it is now, with `new_row` (already in the slab)
    /// linked into it: for a plan whose copy of the list another insert changed meanwhile.
    pub(super) fn relink(&self, neighbour: u32, level: usize, new_row: u32) -> Vec<u32> {
        let list = self.links(neighbour, level).to_vec();
        if list.contains(&new_row) || neighbour == new_row {
            return list;
        }
        let vector_of = |row: u32| self.vectors.get(row);
        self.link_into(neighbour, list, new_row, level, &vector_of, &mut Vec::new())
    }

    /// Applies a plan. A plan that reuses a row, or raises the top level, was made alone
    /// (see [`GraphAnn::insert`]), so the graph is still the one it read. Other plans may have
    /// been made beside each other: each takes the next new row now, and a neighbour list
    /// that another insert changed since the plan read it is made again from what it holds
    /// now, so no insert's links are lost to another's. (Two nodes inserted side by side do
    /// not see each other while choosing their own neighbours, as in hnswlib's parallel
    /// build; each is still linked from the nodes it chose.)
    pub(super) fn apply(&mut self, plan: InsertPlan) {
        let row = match plan.reuse {
            Some(row) => {
                // The writer planned against this graph: its free row is still the last.
                let taken = self.free.pop();
                debug_assert_eq!(taken, Some(row));
                self.vectors.set(row, &plan.vector);
                self.coarse.set(row, &to_f16(&plan.vector));
                self.ids[row as usize] = plan.id;
                self.removed[row as usize] = false;
                self.tombstones -= 1;
                row
            }
            None => {
                let row = self.ids.len() as u32;
                self.vectors.push(&plan.vector);
                self.coarse.push(&to_f16(&plan.vector));
                self.ids.push(plan.id);
                self.levels.push(plan.level as u8);
                self.removed.push(false);
                self.grow_links0(1);
                self.links0.resize(self.links0.len() + self.block0(), 0);
                self.upper.push(vec![0; plan.level * self.block_upper()]);
                row
            }
        };
        for (l, list) in plan.own.iter().enumerate() {
            self.set_links(row, l, list);
        }
        for update in plan.updates {
            let list = if self.links(update.row, update.level) == &update.read[..] {
                let mut list = update.list;
                for n in &mut list {
                    if *n == PENDING {
                        *n = row;
                    }
                }
                list
            } else if update.links_new {
                self.relink(update.row, update.level, row)
            } else {
                // A repair only: made alone, so its list cannot have changed.
                debug_assert!(false, "a reused row's repair raced another insert");
                continue;
            };
            self.set_links(update.row, update.level, &list);
        }
        if let Some(old) = self.rows.insert(plan.id, row) {
            self.tombstone(old);
        }
        if self.entry == NONE || plan.level > self.max_level {
            self.entry = row;
            self.max_level = plan.level;
        }
    }
}

pub(super) fn random_level(rng: &mut SmallRng, m: usize) -> usize {
    // The paper's exponentially decaying level distribution with mL = 1/ln(M).
    let uniform = 1.0 - rng.random::<f64>(); // in (0, 1]
    let level = (-uniform.ln() / (m as f64).ln()).floor();
    (level as usize).min(MAX_LEVEL)
}
