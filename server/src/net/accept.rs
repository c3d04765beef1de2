//! The accept loop: each accepted connection takes a place under the [`Gate`]'s cap (or is
//! closed at once) and is handed on as [`Accepted`], for [`super::lanes`] to give to its
//! client's lane; accept errors back off instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;

use super::gate::Gate;
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
    }
}

/// Accept errors such as EMFILE repeat at once while their cause lasts; waiting this long
/// before accepting again keeps the accept loop from spinning on them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepted connections under the cap.
pub struct Incoming {
    inner: TcpIncoming,
    gate: Arc<Gate>,
    backoff: Option<Pin<Box<Sleep>>>,
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
            // tokio's cooperative budget makes accept return Pending now and then, so a flood
            // of connections refused here cannot monopolise this task.
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
                }
                Some(Ok(stream)) => {
                    // Refused at the cap, the socket is dropped (closed) at once: the client
                    // learns right away instead of waiting in the backlog.
                    if let Some((place, evicted)) = this.gate.enter() {
                        return Poll::Ready(Some(Ok(Accepted {
                            stream,
                            place,
                            evicted,
                        })));
                    }
                }
            }
        }
    }
}
