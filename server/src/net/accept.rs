//! The accept loop: each accepted connection takes a place under the [`Gate`]'s cap (waits a moment while connections evicted for it close, or is
//! closed at once) and is handed on as [`Accepted`], for [`super::lanes`] to give to its
//! client's lane; accept errors back off instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;

use super::gate::{Entry, Gate};
use super::lanes::Accepted;
use super::limits::ConnectionLimits;

/// The listener's accepted connections, capped by `limits`.
pub fn incoming(listener: TcpListener, limits: &ConnectionLimits) -> Incoming {
    let inner = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        // TCP keepalive finds peers that vanished without a FIN even when HTTP/2 pings are off.
        .with_keepalive(Some(Duration::from_secs(60)));
    Incoming {
        inner,
        gate: Gate::new(limits.max_connections),
        backoff: None,
        waiting: None,
    }
}

/// Accept errors such as EMFILE repeat at once while their cause lasts; waiting this long
/// before accepting again keeps the accept loop from spinning on them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often a connection held at the cap asks again while evicted connections close, and how
/// long it is held before it is closed after all. Evicted connections close as soon as their
/// tasks run, so a hold is short; while it lasts, new arrivals wait in the kernel's backlog.
const EVICTION_RECHECK: Duration = Duration::from_millis(1);
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Accepted connections under the cap.
pub struct Incoming {
    inner: TcpIncoming,
    gate: Arc<Gate>,
    backoff: Option<Pin<Box<Sleep>>>,
    /// A connection that arrived while evicted ones were still closing, and since when.
    waiting: Option<(tokio::net::TcpStream, Instant)>,
}

impl Incoming {
    /// The cap's counters.
    pub fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }
}

impl Stream for Incoming {
    type Item = Result<Accepted, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(backoff) = &mut this.backoff {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            let (stream, arrived) = match this.waiting.take() {
                Some(held) => held,
                None => {
                    // tokio's cooperative budget makes accept return Pending now and then, so
                    // a flood of connections refused here cannot monopolise this task.
                    match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                        None => return Poll::Ready(None),
                        Some(Err(error)) => {
                            if !matches!(
                                error.kind(),
                                io::ErrorKind::ConnectionAborted
                                    | io::ErrorKind::ConnectionReset
                                    | io::ErrorKind::Interrupted
                            ) {
                                tracing::warn!(%error, "accept failed; backing off");
                                this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                            }
                            continue;
                        }
                        Some(Ok(stream)) => (stream, Instant::now()),
                    }
                }
            };
            match this.gate.enter() {
                Entry::Entered(place, evicted) => {
                    return Poll::Ready(Some(Ok(Accepted {
                        stream,
                        place,
                        evicted,
                    })));
                }
                Entry::Wait if arrived.elapsed() < EVICTION_WAIT => {
                    this.waiting = Some((stream, arrived));
                    this.backoff = Some(Box::pin(tokio::time::sleep(EVICTION_RECHECK)));
                }
                Entry::Wait => this.gate.refuse(),
                // Refused at the cap, the socket is dropped (closed) at once: the client
                // learns right away instead of waiting in the backlog.
                Entry::Refused => {}
            }
        }
    }
}
