//! One connection's pacing: the answers charged to it, and what its socket may read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::Pacer;
use super::charge::Charge;
use super::pause::Pause;
use super::read_gate::{PACED_READ_BYTES, ROOM_READ_BYTES, ReadGate, SHED_READ_BYTES};

/// How long a connection stays paced (reads limited) after its last charge beyond allowance.
pub(super) const PACED_FOR: Duration = Duration::from_secs(1);

/// The pause after each limited read of a paced connection. The requests of a read are
/// answered (and charged) by tasks that run after the read; without a gap, the connection's
/// driver would read on, a little at a time, until its socket is drained, before the first
/// charge could pause it.
const PACED_READ_GAP: Duration = Duration::from_millis(1);

/// One connection's pacing state, shared by its socket (which stops reading while paused)
/// and its requests (whose cheap answers are charged to it).
#[derive(Debug)]
pub struct Connection {
    /// Unique while the server runs: tells a client's connections apart.
    pub id: u64,
    pacer: Arc<Pacer>,
    pause: Arc<Pause>,
}

impl Pacer {
    /// Pacing state for a new connection.
    pub fn connection(self: &Arc<Self>) -> Arc<Connection> {
        Arc::new(Connection {
            id: self.connections.fetch_add(1, Ordering::Relaxed) + 1,
            pacer: Arc::clone(self),
            // A new connection starts with a small allowance, not a whole second's: a client
            // that reconnects to refill it gains little.
            pause: Arc::new(Pause::new(self.config.connection_rate.min(4.0))),
        })
    }
}

impl Connection {
    /// Charges one cheap answer to this connection; pauses it when it is beyond its allowance
    /// and the shared budget is spent.
    pub fn charge(self: &Arc<Self>, charge: Charge) {
        let config = self.pacer.config;
        if !config.enabled() {
            return;
        }
        self.pacer.charged.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut state = self.pause.lock();
        state.wants_room = charge == Charge::Shed;
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.refilled = now;
        // A paced connection forfeits its allowance: the allowances are for connections that
        // ask for a few cheap answers (probes, monitors), and summed over the many connections
        // of one flood they would be a budget of their own that grows with every connection
        // opened, on top of the shared budget. It gets it back once it has gone `PACED_FOR`
        // without exceeding it.
        let paced = state.paced_until.is_some_and(|until| until > now);
        state.tokens = if paced {
            0.0
        } else {
            (state.tokens + elapsed * config.connection_rate).min(config.connection_rate)
        };
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            return;
        }
        // Beyond its allowance, but while the shared budget lasts it is read as before: a
        // moderate overload is shed at full speed. Only once the budget is spent is it
        // paused, and then read a little at a time.
        let Some(ready) = self.pacer.draw_excess(now, charge) else {
            return;
        };
        let until = ready.min(now + config.max_pause);
        if state.paused_until.is_none_or(|u| u <= now) {
            self.pacer.pauses.fetch_add(1, Ordering::Relaxed);
        }
        state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
        // Still limited for a while after the pause, or it would read all it buffered then.
        state.paced_until = Some(until + PACED_FOR);
        let list = state.wants_room && !state.listed;
        state.listed |= list;
        drop(state);
        if list {
            self.pacer.list_for_room(&self.pause);
        }
    }

    /// One of this connection's requests was served (see [`Pacer::credit_served`]).
    pub fn served(&self) {
        if self.pacer.config.enabled() {
            self.pacer.credit_served();
        }
    }

    /// Whether the socket may read now. While paused, the caller's waker is kept so that
    /// [`Pacer::room`] can resume the read early; the caller also sets a timer for the end
    /// of the pause.
    pub fn gate(&self, waker: &Waker) -> ReadGate {
        let mut state = self.pause.lock();
        let now = Instant::now();
        let woken_for_room = std::mem::take(&mut state.woken_for_room);
        if woken_for_room {
            // Read once since it was woken for room: the next one may be woken.
            self.pacer.room_pending.store(false, Ordering::Release);
        }
        if let Some(until) = state.paused_until {
            if until > now {
                match &state.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => state.waker = Some(waker.clone()),
                }
                return ReadGate::PausedUntil(until);
            }
            state.paused_until = None;
        }
        match state.paced_until {
            Some(_) if woken_for_room => ReadGate::Limited(ROOM_READ_BYTES),
            Some(until) if until > now && state.wants_room => ReadGate::Limited(SHED_READ_BYTES),
            Some(until) if until > now => ReadGate::Limited(PACED_READ_BYTES),
            Some(_) => {
                state.paced_until = None;
                ReadGate::Open
            }
            None => ReadGate::Open,
        }
    }

    /// Called after a limited read: a short gap before the next one (see [`PACED_READ_GAP`]).
    pub fn after_limited_read(&self) {
        let mut state = self.pause.lock();
        let gap = Instant::now() + PACED_READ_GAP;
        state.paused_until = Some(state.paused_until.map_or(gap, |u| u.max(gap)));
    }
}
