//! One connection's pause and allowance: the part of its pacing state that both its own
//! requests and the pacer's list of connections waiting for room reach.

use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use tokio::time::Instant;

/// A connection's pause and allowance, behind one lock. The pacer lists connections waiting
/// for room by this (not by their [`super::Connection`]), so that the pacer's side does not
/// import the connection's.
#[derive(Debug)]
pub struct Pause {
    state: Mutex<PauseState>,
}

#[derive(Debug)]
pub(super) struct PauseState {
    /// The allowance left, refilled at `connection_rate` up to one second's worth.
    pub(super) tokens: f64,
    pub(super) refilled: Instant,
    /// Not read until then.
    pub(super) paused_until: Option<Instant>,
    /// Reads limited ([`super::PACED_READ_BYTES`] or [`super::SHED_READ_BYTES`]) until then.
    pub(super) paced_until: Option<Instant>,
    /// The socket's reader, woken when the pause is lifted early.
    pub(super) waker: Option<Waker>,
    /// Whether its last charge was a shed (see [`super::Charge`]).
    pub(super) wants_room: bool,
    /// In the pacer's list of connections waiting for room.
    pub(super) listed: bool,
    /// Resumed for room and not read since: the pacer wakes one such connection at a time.
    pub(super) woken_for_room: bool,
}

impl Pause {
    /// A connection's first state: not paused, with `tokens` of allowance.
    pub(super) fn new(tokens: f64) -> Self {
        Self {
            state: Mutex::new(PauseState {
                tokens,
                refilled: Instant::now(),
                paused_until: None,
                paced_until: None,
                waker: None,
                wants_room: false,
                listed: false,
                woken_for_room: false,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lifts a pause early, for room; false if it was not paused, or room would not help it.
    pub(super) fn resume_for_room(&self) -> bool {
        let mut state = self.lock();
        state.listed = false;
        if !state.wants_room || state.paused_until.take().is_none() {
            return false;
        }
        state.woken_for_room = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        true
    }
}
