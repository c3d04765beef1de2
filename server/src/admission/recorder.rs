//! Where admission reports what it does, and why it refused a request.

use std::time::Duration;

use crate::caller::ClientKey;
use crate::method::Method;

/// Where admission reports what it does (the metrics layer implements it). A trait, so that
/// admission, below the layers, never imports them.
pub trait Recorder: Send + Sync + std::fmt::Debug {
    /// One request of `client` refused before it ran.
    fn shed(&self, reason: ShedReason, client: &ClientKey);
    /// One request of `client` admitted (given its slot).
    fn admitted(&self, client: &ClientKey);
    /// How long an admitted request waited for its slot.
    fn queue_wait(&self, method: Method, waited: Duration);
    /// How long an admitted request held its slot.
    fn service_time(&self, method: Method, took: Duration);
}

/// Why a request was refused before it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// `queue_depth` requests were already waiting, and its client held the most places.
    QueueFull,
    /// It waited, and gave its place up to a lighter client's request when the queue was
    /// full: its client held the most places.
    Displaced,
    /// The bodies of waiting requests already took `max_queued_bytes`.
    QueueBytes,
    /// It waited `max_queue_wait` without a slot.
    QueueTimeout,
    /// The queue has stayed non-empty and its expected wait exceeds `queue_target`.
    QueueLatency,
    /// Its deadline could not be met.
    Deadline,
}

impl ShedReason {
    /// Every reason, for metrics.
    pub const ALL: [ShedReason; 6] = [
        ShedReason::QueueFull,
        ShedReason::Displaced,
        ShedReason::QueueBytes,
        ShedReason::QueueTimeout,
        ShedReason::QueueLatency,
        ShedReason::Deadline,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::Displaced => "displaced",
            ShedReason::QueueBytes => "queue_bytes",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::QueueLatency => "queue_latency",
            ShedReason::Deadline => "deadline",
        }
    }
}
