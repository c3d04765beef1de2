//! Admission control for the VectorIndex service: a cost-weighted concurrency limit, a bounded
//! wait queue in front of it, and load shedding that refuses early and cheaply.
//!
//! A request's life here:
//! 1. **Queue full?** Once `queue_depth` requests wait, the next one is answered
//!    `RESOURCE_EXHAUSTED` at once, before it is decoded or priced: an overloaded server spends
//!    almost nothing on the work it refuses. (Its body has already arrived: [`crate::net::whole_request`]
//!    reads bodies whole first, so a client that never finishes one cannot hold a slot.)
//! 2. **Body and cost.** The (unary) body is taken, bounded by `max_queued_bytes` across all
//!    waiting requests, and priced in [`Cost`] units: an ANN search with a modest `k`/`ef` is
//!    one slot; wide searches, long texts, exact scans and big upsert batches cost more, up to
//!    half the limit. Expensive requests wait in their own queue, and the two queues take turns
//!    by cost served, so a few exact scans cannot starve the cheap searches (and vice versa).
//! 3. **Deadline and wait.** A request whose `grpc-timeout` cannot be met (the expected queue
//!    wait plus its service time, from measured service times, exceeds it) is refused with
//!    `DEADLINE_EXCEEDED` before any work. Waiting is bounded in time: `max_queue_wait` always,
//!    and with `queue_target` set, CoDel-style, once the queue has not emptied for
//!    `queue_interval`, arrivals whose expected wait exceeds twice the target are shed at once,
//!    those between one and two times it one for every two requests served (a closed-loop
//!    client's resends would otherwise make a burst of refusals of a queue just past it), and
//!    the queue goes on being held so until a whole interval passes in which every arrival fitted.
//!    A request whose client cancels while it waits leaves the queue and never runs.
//! 4. **Shed answers** carry `grpc-retry-pushback-ms` (gRFC A6): the expected wait, so polite
//!    clients come back when there is room.
//!
//! `Stats` bypasses it: monitoring must see an overloaded server, not be shed by it.
//!
//! It is one tower layer rather than tower's `LoadShed` + `Buffer` + `ConcurrencyLimit`, because
//! those cannot price requests, bound wait time, or report how many requests wait.
//!
//! What lives here: [`settings`] (flags and [`Config`]), [`cost`] (pricing a request),
//! [`scheduler`] (the limit, the two fair queues, the standing-queue rule), [`state`]
//! ([`Admission`]: the shared state, and the units a request holds while it waits and runs),
//! [`entry`] (a request's way through steps 1-3), [`figures`] (what admission reports),
//! [`recorder`] (where it reports to, and [`ShedReason`]), [`room`] (who is told when the queue
//! has room), [`layer`] (the tower layer in front of the service), [`work`] (the runtime admitted work runs on, apart
//! from the request path's), [`adaptive`] (the controller that moves the limit)
//! and [`brownout`] (the controller that narrows searches under a standing queue). Admission
//! reports to metrics through the [`Recorder`] trait, so it imports nothing above it.

pub mod adaptive;
pub mod brownout;
pub mod cost;
mod entry;
pub mod fair;
mod figures;
pub mod layer;
mod recorder;
mod room;
pub mod scheduler;
pub mod settings;
mod state;
#[cfg(test)]
mod tests;
pub mod work;

pub use cost::Cost;
pub use figures::{AdmissionStats, ClientLoad, QueueState};
pub use recorder::{Recorder, ShedReason};
pub use room::RoomSignal;
pub use scheduler::Window;
pub use settings::{AdaptiveConfig, Args, BrownoutConfig, Config};
pub use state::Admission;
