//! The connection cap: counts open connections, and at the cap evicts the oldest one that has
//! not sent a byte yet (see [`super`] for why).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Connections beyond the cap that may exist for a moment, while the ones they evicted close.
const EVICTION_SLACK: usize = 64;

/// What [`Gate::enter`] decided for an arriving connection.
#[derive(Debug)]
pub enum Entry {
    /// It has a place, and a receiver that fires if the cap evicts it before it starts.
    Entered(Place, oneshot::Receiver<()>),
    /// Not yet: connections evicted to make room are still closing; ask again shortly.
    Wait,
    /// Every connection under the cap has started: close this one.
    Refused,
}

/// Counts open connections against the cap, and knows which have not started yet.
#[derive(Debug)]
pub struct Gate {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    evicted: AtomicU64,
    full: AtomicBool,
    next_id: AtomicU64,
    /// Connections that have not sent their first bytes yet, oldest first, each with the
    /// sender that evicts it.
    starting: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

impl Gate {
    /// A gate admitting `max` connections at once (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            full: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            starting: Mutex::new(BTreeMap::new()),
        })
    }

    /// Takes a place for one connection; at the cap, by evicting the oldest connection that
    /// has not started yet.
    ///
    /// Eviction is what keeps a flood of silent sockets from locking real clients out until
    /// the handshake timeout: a real client starts within its first round trip, so only
    /// connections that have sent nothing are given up, and they have invested nothing.
    pub fn enter(self: &Arc<Self>) -> Entry {
        let take = |limit: usize| {
            self.open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                    (open < limit).then_some(open + 1)
                })
                .is_ok()
        };
        if take(self.max) {
            self.full.store(false, Ordering::Relaxed);
            let (place, evicted) = self.place();
            return Entry::Entered(place, evicted);
        }
        if take(self.max + EVICTION_SLACK) {
            let oldest = self.starting().pop_first();
            if let Some((_, evict)) = oldest {
                // The evicted connection fails its next read and gives its place back.
                let _ = evict.send(());
                self.evicted.fetch_add(1, Ordering::Relaxed);
                let (place, evicted) = self.place();
                return Entry::Entered(place, evicted);
            }
            self.open.fetch_sub(1, Ordering::AcqRel);
        } else if !self.starting().is_empty() {
            // The slack is taken by connections evicted but not closed yet: they close as
            // soon as their tasks run. Refusing now would turn away a real client that only
            // arrived while the accept loop ran ahead of them.
            return Entry::Wait;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        // One warning per episode of being full, not one per refused connection: a flood
        // must not turn into a flood of log lines.
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_connections = self.max,
                "connection cap reached with every connection started; refusing new ones"
            );
        }
        Entry::Refused
    }

    /// Gives up on a connection that waited for evicted ones to close and saw none close:
    /// counted as refused.
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn place(self: &Arc<Self>) -> (Place, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (evict, evicted) = oneshot::channel();
        self.starting().insert(id, evict);
        (
            Place {
                gate: Arc::clone(self),
                id,
            },
            evicted,
        )
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        // The map stays consistent whatever panicked while holding it: every operation on it
        // is a single insert or remove.
        self.starting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections refused at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections evicted before they started, to make room at the cap, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// One connection's place under the cap, given back on drop.
#[derive(Debug)]
pub struct Place {
    gate: Arc<Gate>,
    id: u64,
}

impl Place {
    /// The connection has started: it can no longer be evicted.
    pub(super) fn started(&self) {
        self.gate.starting().remove(&self.id);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.started();
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_evicts_the_oldest_unstarted_connection_at_its_cap() {
        let gate = Gate::new(2);
        let (a, mut a_evicted) = entered(gate.enter());
        let (b, mut b_evicted) = entered(gate.enter());
        b.started();
        // At the cap, a third connection takes the place of the oldest one not started (a).
        let (c, _c_evicted) = entered(gate.enter());
        assert!(a_evicted.try_recv().is_ok(), "a is told to go");
        assert!(b_evicted.try_recv().is_err(), "b, started, stays");
        assert_eq!(
            (gate.open(), gate.evicted()),
            (3, 1),
            "over the cap until a closes"
        );
        drop(a);
        assert_eq!(gate.open(), 2);
        // Everyone started: nobody to evict, so the next one is refused.
        c.started();
        assert!(matches!(gate.enter(), Entry::Refused), "refused");
        assert_eq!(gate.refused(), 1);
        drop(b);
        let _d = entered(gate.enter());
    }

    fn entered(entry: Entry) -> (Place, oneshot::Receiver<()>) {
        match entry {
            Entry::Entered(place, evicted) => (place, evicted),
            other => panic!("expected a place, got {other:?}"),
        }
    }

    #[test]
    fn at_the_slack_an_arrival_waits_for_evicted_connections_to_close() {
        let gate = Gate::new(1);
        let mut places = vec![entered(gate.enter())];
        // Each arrival beyond the cap evicts an unstarted one, up to the slack.
        for _ in 0..EVICTION_SLACK {
            places.push(entered(gate.enter()));
        }
        assert_eq!(gate.open(), 1 + EVICTION_SLACK);
        // The evicted ones have not closed yet and unstarted ones remain: wait, not refuse.
        assert!(matches!(gate.enter(), Entry::Wait));
        assert_eq!(gate.refused(), 0);
        // One evicted connection closes: the next arrival gets in.
        drop(places.remove(0));
        let _next = entered(gate.enter());
    }
}
