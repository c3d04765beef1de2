//! What admission reports of itself: its figures now, each client's load, the queue's state.

/// What the queue looked like at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// Nobody waits.
    Empty,
    /// Requests wait, but the queue has not stood for a whole tick yet.
    Waiting,
    /// Requests have waited without a break for at least a tick.
    Standing,
}

/// One client's load now, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLoad {
    /// The client's label (`127.0.0.1`, `tenant:analytics`, or `other` for the rest).
    pub client: String,
    /// Its requests waiting for a slot.
    pub queued: u64,
    /// Its requests running.
    pub in_flight: u64,
}

/// A snapshot of the admission figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests waiting for a slot now.
    pub queued: u64,
    /// Requests refused since start.
    pub shed_total: u64,
    /// The concurrency limit, in slots (0 when admission is off).
    pub limit: u64,
}
