//! Bounds on what one peer can make the server hold, so that abusive or broken clients
//! (thousands of idle sockets, slowloris, rapid-reset floods, huge headers, clients that never
//! read) cannot take the server away from normal ones.
//!
//! Three places enforce them, outermost first (their settings: [`limits`]):
//! - [`accept`] ([`incoming`]): the accept loop. A connection cap ([`gate`]): at the cap, a new connection
//!   evicts the oldest one that has not sent a byte yet, or if every one has, it is closed as
//!   soon as it is accepted; so file descriptors and per-connection memory stay bounded, silent
//!   sockets cannot lock real clients out, and the server never reaches `EMFILE` (accept errors
//!   back off instead of spinning).
//!   Each accepted socket is a [`GuardedSocket`] ([`socket`]): it must send its first bytes (the HTTP/2
//!   preface, or a TLS hello) within the handshake timeout, and is closed after the idle
//!   timeout without a single byte from the peer, or after `max_connection_idle` without an
//!   open request (a peer that completed HTTP/2 and answers pings, but never asks for
//!   anything, is still idle: gRPC's `MAX_CONNECTION_IDLE`). Requests are counted per
//!   connection through its [`PeerInfo`], which tonic puts in every request's extensions.
//! - [`lanes`]: each accepted connection is served on one of several request-path runtimes,
//!   all of one party's connections (an address; with tenants, an address and a token, read
//!   from the first request by [`first_request`]) on the same one, so that a flooding
//!   client's reads and refusals queue on its own lane's threads and not in front of
//!   everybody else's requests ([`seating`]: which lane each party's connections are in).
//! - [`http2`]: HTTP/2 limits on tonic's server builder (streams per connection, header list
//!   size, reset-stream guards, windows, frame size, keepalive pings that find peers which stopped
//!   answering).
//! - [`pacing`] ([`PacingLayer`], [`Pacer`]): every answer that is not admitted work
//!   (refusals, health, `Stats`, reflection) is charged to its connection, and a connection
//!   that asks for more of them than its share is read slowly, so that a flood of cheap calls
//!   costs its sender rather than the server's CPU. It also tells admission who a request is
//!   from (its [`crate::caller::Caller`]).
//! - [`whole_request`] ([`WholeRequestLayer`]): a VectorIndex request's body must arrive whole within a timeout
//!   before the request reaches admission control. Admission holds a concurrency slot from the
//!   moment a request is admitted; without this, a client that opens streams and never finishes
//!   their bodies would hold every slot, and normal requests would queue behind it forever.
//!
//! What stays bounded, and by what: connections by `max_connections`; streams per connection by
//! `max_concurrent_streams`; bytes a peer can push unread by the HTTP/2 windows; request bodies
//! read but not yet answered by `request_buffer_bytes`; a stalled request body by
//! `request_read_timeout`; a silent socket by the handshake and idle timeouts and
//! keepalive pings; a connection that asks for nothing by `max_connection_idle`. Responses a client never reads stay within its stream windows, on at most
//! `max_concurrent_streams` streams per connection.

pub mod accept;
pub mod first_request;
pub mod gate;
pub mod http2;
pub mod lanes;
pub mod limits;
pub mod pacing;
pub mod seating;
pub mod socket;
pub mod whole_request;

pub use accept::{Incoming, incoming};
pub use gate::{Gate, Place};
pub use lanes::{Dispatch, Lane, Lanes};
pub use limits::{Args, ConnectionLimits};
pub use pacing::{Pacer, PacingLayer};
pub use socket::{Activity, GuardedSocket, PeerInfo};
pub use whole_request::{WholeRequestLayer, WholeRequestService};
