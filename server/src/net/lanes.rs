//! Request-path lanes: connections are served on several tokio runtimes, all of one client's
//! connections on the same one, so that a client flooding the server loads one lane's threads
//! and the operating system's scheduler keeps the others' turns short.
//!
//! Why: admission's fair queue decides whose request is served next, but only once a request
//! has reached it. Before that, a request waits for the request path to read it, and after
//! it, its answer waits to be written: on one runtime that is a first-come-first-served line
//! behind every ready task of every connection. Under a 64 x 64 stream flood those are
//! thousands of reads, refusals and writes, and the polite client's request and answer queue
//! behind them, though its searches are served promptly once admitted (figures in
//! `docs/overload.md`). Threads are scheduled fairly
//! by the kernel, which wakes a thread that was asleep ahead of one that has run all along:
//! so the polite client's lane, idle between its requests, is read and written as soon as
//! its bytes arrive, whatever the flood's lane has queued.
//!
//! How:
//! - The accept loop (on the server's own runtime) takes each connection's place under the
//!   cap and gives it to a lane: the lane of its party's other open connections, or, for a
//!   party with none, the lane with the fewest open connections. The party is the peer's IP
//!   address; where the token file names tenants, it is the address and the token of the
//!   connection's first request ([`super::first_request`], which looks at it without
//!   consuming it), so that a tenant's connections are read and answered apart from another
//!   tenant's flood behind the same address (a proxy, a NAT). Lanes are kept per party
//!   rather than balanced per connection: a flood's connections, spread over every lane,
//!   would leave no lane quiet for anybody else. Connections of one client with no token to
//!   tell them apart share a lane, except those opened while that client's requests wait in
//!   admission, which share a second one ([`super::seating`]); admission serves them in turn.
//! - The socket is moved into the lane's runtime (re-registered with its I/O driver, so its
//!   readiness is reported by the lane's own threads), where it becomes a [`GuardedSocket`]
//!   and tonic serves it.
//! - Each lane has as many worker threads as the server has CPUs, so one client alone can
//!   still use all of them. A lane with no connections costs idle threads only. They ask the
//!   kernel for short time slices (`crate::priority::as_request_path`), so a polite client's
//!   lane waits less for the flood's to end its turn.
//!
//! A single client (the seed's scenarios, one load generator) has all its connections in one
//! lane, served as they were on a single runtime.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;

use super::gate::Place;
use super::limits::ConnectionLimits;
use super::pacing::Pacer;
use super::seating::{Seat, Seats};
use super::socket::GuardedSocket;

/// A connection accepted under the cap, on its way to its lane.
#[derive(Debug)]
pub struct Accepted {
    /// The socket, still registered with the accepting runtime.
    pub stream: tokio::net::TcpStream,
    /// Its place under the connection cap.
    pub place: Place,
    /// Fires if the cap evicts it before it starts.
    pub evicted: oneshot::Receiver<()>,
}

/// A connection handed to a lane: a plain socket, registered with no runtime yet.
#[derive(Debug)]
struct Handed {
    stream: std::net::TcpStream,
    /// Bytes already taken off the socket, to be read before it ([`super::first_request`]).
    replay: Vec<u8>,
    place: Place,
    evicted: oneshot::Receiver<()>,
    seat: Seat,
}

/// The lanes' runtimes; shut down (without waiting) when dropped.
#[derive(Debug)]
pub struct Lanes {
    runtimes: Vec<Runtime>,
}

/// One lane's side: its runtime, and the connections given to it.
#[derive(Debug)]
pub struct Lane {
    /// Where the lane's server runs (tonic spawns each connection's task there).
    pub handle: Handle,
    /// The connections given to this lane, as guarded sockets.
    pub sockets: LaneSockets,
}

/// Whether the client at an address has requests waiting in admission now (it floods): a new
/// connection of its is seated apart from its others ([`super::seating`]).
#[derive(Clone)]
pub struct Flooding(pub Arc<dyn Fn(IpAddr) -> bool + Send + Sync>);

impl std::fmt::Debug for Flooding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flooding")
    }
}

/// Gives each accepted connection to its client's lane.
#[derive(Debug, Clone)]
pub struct Dispatch {
    senders: Vec<mpsc::UnboundedSender<Handed>>,
    seats: Seats,
    /// Whether a connection's first request's token counts in its party (tenants are named).
    by_token: bool,
    flooding: Flooding,
}

/// Starts `count` lanes (at least one), each with one worker thread per CPU this process may
/// run on. Their sockets are guarded by `limits` and paced by `pacer`. With `by_token`, a
/// connection's lane is chosen by its address and its first request's token. `flooding`
/// says whether an address's requests wait in admission.
pub fn start(
    count: usize,
    limits: &ConnectionLimits,
    pacer: &Arc<Pacer>,
    by_token: bool,
    flooding: Flooding,
) -> io::Result<(Lanes, Dispatch, Vec<Lane>)> {
    let count = count.max(1);
    let workers = crate::process::available_cpus();
    let mut runtimes = Vec::with_capacity(count);
    let mut senders = Vec::with_capacity(count);
    let mut lanes = Vec::with_capacity(count);
    for index in 0..count {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(format!("vecrig-lane-{index}"))
            .on_thread_start(crate::priority::as_request_path)
            .enable_all()
            .build()?;
        let (sender, receiver) = mpsc::unbounded_channel();
        lanes.push(Lane {
            handle: runtime.handle().clone(),
            sockets: LaneSockets {
                receiver,
                limits: *limits,
                pacer: Arc::clone(pacer),
            },
        });
        senders.push(sender);
        runtimes.push(runtime);
    }
    let dispatch = Dispatch {
        senders,
        seats: Seats::new(count),
        by_token: by_token && count > 1,
        flooding,
    };
    Ok((Lanes { runtimes }, dispatch, lanes))
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which tokio forbids inside another
        // runtime (where the server is dropped); connections still open here are closed.
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

impl Dispatch {
    /// Gives `accepted` to its party's lane: at once, or, when tokens count, once its first
    /// request's token is known (in a task of its own, on the accepting runtime). A
    /// connection that cannot be moved (its socket failed meanwhile) or whose lane has
    /// stopped is closed.
    pub fn give(&self, accepted: Accepted) {
        if !self.by_token {
            self.seat(accepted, None, Vec::new());
            return;
        }
        let dispatch = self.clone();
        tokio::spawn(async move {
            let mut accepted = accepted;
            // A client that did not acknowledge the SETTINGS sent to it is closed here.
            if let Ok(first) = super::first_request::look(&mut accepted.stream).await {
                dispatch.seat(accepted, first.key, first.replay);
            }
        });
    }

    fn seat(&self, accepted: Accepted, token: Option<u64>, replay: Vec<u8>) {
        let address = accepted
            .stream
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |peer| peer.ip().to_canonical());
        let Ok(stream) = accepted.stream.into_std() else {
            return;
        };
        // A token names a tenant, which admission knows by its name, not by this key: only
        // a connection without one is known to admission by its address.
        let (lane, seat) = self.seats.take((address, token), || {
            token.is_none() && (self.flooding.0)(address)
        });
        // A send fails only once the lane's server has stopped: the socket is then dropped.
        let _ = self.senders[lane].send(Handed {
            stream,
            replay,
            place: accepted.place,
            evicted: accepted.evicted,
            seat,
        });
    }

    /// Open connections per lane, in lane order.
    pub fn connections(&self) -> Vec<usize> {
        self.seats.per_lane()
    }
}

/// The connections given to one lane, as the guarded sockets tonic serves. Polled on the
/// lane's runtime, so each socket joins that runtime's I/O driver and timers.
#[derive(Debug)]
pub struct LaneSockets {
    receiver: mpsc::UnboundedReceiver<Handed>,
    limits: ConnectionLimits,
    pacer: Arc<Pacer>,
}

impl Stream for LaneSockets {
    type Item = Result<GuardedSocket, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(handed) = std::task::ready!(this.receiver.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        let stream = match tokio::net::TcpStream::from_std(handed.stream) {
            Ok(stream) => stream,
            // tonic logs the error and goes on with the next connection.
            Err(error) => return Poll::Ready(Some(Err(error))),
        };
        Poll::Ready(Some(Ok(GuardedSocket::new(
            stream,
            handed.replay,
            handed.place,
            handed.evicted,
            &this.limits,
            this.pacer.connection(),
            handed.seat,
        ))))
    }
}
