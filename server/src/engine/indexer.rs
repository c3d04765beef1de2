//! The indexer: moves written points from the tail into the graph, on threads of its own, and
//! removes the graph entries of deleted and replaced points.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::state::Engine;
use crate::error::Error;

impl Engine {
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
    pub(super) fn remove_replaced(&self) -> Result<usize, Error> {
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
}
