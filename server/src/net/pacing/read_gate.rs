//! What a connection's socket may read now, and how much a limited read takes.

use tokio::time::Instant;

/// Bytes a paced connection may read per wake-up when its last charge was a cheap answer that
/// is not a refusal of work (health, `Stats`, reflection, errors): a few such calls. Small,
/// because a connection whose debt is deeper than [`super::Config::max_pause`] is read again
/// after that pause whatever the shared budget says, so the connections of one flood together
/// still get `connections x requests per read / max_pause` answers a second; larger reads
/// let a flood of health checks past its budget (see `docs/overload.md`).
pub const PACED_READ_BYTES: usize = 256;

/// Bytes a paced connection may read per wake-up when its last charge was a refusal of work
/// (RESOURCE_EXHAUSTED): about ten searches of 64 dimensions. A refusal's cost is mostly per
/// wake-up (the pause's timer, the read, the task wake-ups, a write of its own), not per
/// request, so a paced flood of searches read a few at a time is refused at a fraction of
/// the cost of reading less than one search per wake-up, as [`PACED_READ_BYTES`] would (the
/// goodput each size leaves a flood: `docs/overload.md`). The floor above is no concern here:
/// searches are large, and refusals of work are also held by admission's room signal.
pub const SHED_READ_BYTES: usize = 4096;

/// Bytes a connection woken for room ([`super::Pacer::room`]) may read at once: a handful of
/// searches, so that one wake-up refills the queue's room. With [`PACED_READ_BYTES`] (less
/// than one search's frames) a wake-up would bring part of a request, and under CoDel
/// settings the queue would run dry between wake-ups, leaving the CPU idle.
pub const ROOM_READ_BYTES: usize = 4096;

/// The most any limited read takes (the size of the socket's buffer for them).
pub const MAX_LIMITED_READ_BYTES: usize = max_bytes(
    max_bytes(PACED_READ_BYTES, SHED_READ_BYTES),
    ROOM_READ_BYTES,
);

const fn max_bytes(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// What the socket may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadGate {
    /// Read as much as fits.
    Open,
    /// Read at most this many bytes.
    Limited(usize),
    /// Do not read until this moment (or an earlier wake-up).
    PausedUntil(Instant),
}
