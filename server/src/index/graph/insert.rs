//! Insert planning: an insert's neighbours chosen under the read lock into a [`Plan`], applied
//! under the write lock and reconciled with the plans applied meanwhile; and the level an
//! insert is drawn at.

use std::collections::HashMap;

use rand::Rng;
use rand::rngs::SmallRng;

use super::nodes::{Graph, MAX_LEVEL, NONE};
use super::scratch::{Scored, Scratch};
use super::slab::to_f16;

/// The slot of the node a plan inserts when that slot is only known once the plan is applied
/// (a new slot at the end, whose number depends on the inserts applied meanwhile).
pub(super) const PENDING: u32 = u32::MAX - 1;
/// The seed of the level generator: the same inserts build the same graph.
pub(super) const LEVEL_SEED: u64 = 0x5eed_0016;

/// What an insert will change, computed under the read lock (see module docs).
pub(super) struct Plan {
    pub(super) id: u64,
    pub(super) vector: Vec<f32>,
    pub(super) level: usize,
    /// The tombstoned slot the node takes (`None`: a new slot at the end).
    pub(super) reuse: Option<u32>,
    /// The new node's own neighbours, per level from 0.
    pub(super) own: Vec<Vec<u32>>,
    /// Existing nodes' new neighbour lists.
    pub(super) updates: Vec<Update>,
}

/// One existing node's new neighbour list at one level, and what it was made from.
pub(super) struct Update {
    pub(super) slot: u32,
    pub(super) level: usize,
    /// The list as the plan read it: if another insert changed it before this plan is
    /// applied, the new list is made again from the current one (see [`Graph::apply`]).
    pub(super) read: Vec<u32>,
    /// The new list; [`PENDING`] stands for the inserted node's slot.
    pub(super) list: Vec<u32>,
    /// Whether the new list links the inserted node (else it only repairs a reused slot's
    /// old neighbourhood).
    pub(super) links_new: bool,
}

impl Graph {
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
    pub(super) fn plan_insert(
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
    pub(super) fn link_into<'a>(
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
    pub(super) fn relink(&self, neighbour: u32, level: usize, new_slot: u32) -> Vec<u32> {
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
    pub(super) fn apply(&mut self, plan: Plan) {
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
}

pub(super) fn random_level(rng: &mut SmallRng, m: usize) -> usize {
    // The paper's exponentially decaying level distribution with mL = 1/ln(M).
    let uniform = 1.0 - rng.random::<f64>(); // in (0, 1]
    let level = (-uniform.ln() / (m as f64).ln()).floor();
    (level as usize).min(MAX_LEVEL)
}
