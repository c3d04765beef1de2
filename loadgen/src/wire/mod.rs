//! The hot path's own gRPC client: Search and Upsert over HTTP/2 (our own client side of the
//! protocol), one channel of connections per sending thread, requests and their headers
//! encoded once.
//!
//! Why not tonic here: on a trivial RPC the tonic path costs several times h2load's CPU per
//! request (figures in `docs/benchmarks.md`), spent in a buffer task and a task per request between the caller and the
//! connection, two timers per request, an 8 KiB codec buffer and a re-encode per attempt.
//! tonic stays for everything off the hot path (pre-flight, health, `Stats`, read-backs).
//! [`grpc`] is gRPC's part (messages in frames, status as tonic reads it), [`frame`] HTTP/2's
//! framing and request headers, [`session`] one HTTP/2 connection, [`connection`] a thread's
//! connections, re-established when lost.

pub mod connection;
pub mod frame;
pub mod grpc;
mod session;

pub use connection::{Channel, Target};
pub use grpc::{Answer, Rpc};
#[doc(hidden)]
pub use session::answers_to;

/// Which client sends the load's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// Our HTTP/2 client on each sending thread ([`wire`](crate::wire)).
    #[default]
    H2,
    /// tonic's channel pool, as before the hot path: for comparison.
    Tonic,
}
