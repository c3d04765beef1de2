//! [`GuardedSocket`]: an accepted socket with deadlines (handshake, idle, no request for
//! `max_connection_idle`), the count of requests open on it ([`Activity`], reached from a
//! request through [`PeerInfo`]), and its pacing: not read while paused, a little at a time
//! while paced ([`super::pacing`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::gate::Place;
use super::limits::ConnectionLimits;
use super::pacing::{self, MAX_LIMITED_READ_BYTES, ReadGate};
use super::seating::Seat;

/// An accepted socket that fails (and so is closed by hyper) when its peer is too slow to
/// start or falls silent. It holds its place under the cap until dropped.
pub struct GuardedSocket {
    stream: TcpStream,
    /// Bytes taken off the socket before it was handed here, read before it.
    replay: Vec<u8>,
    place: Place,
    /// Fires when the gate evicts this connection; `None` once started (or evicted).
    evicted: Option<oneshot::Receiver<()>>,
    /// Bytes still expected before the handshake deadline (the 24-byte HTTP/2 preface).
    handshake_left: usize,
    handshake: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_read: Instant,
    idle: Pin<Box<Sleep>>,
    /// Requests open on this connection, counted by [`WholeRequestService`].
    activity: Arc<Activity>,
    max_connection_idle: Option<Duration>,
    /// Fires when the connection may have been without a request for `max_connection_idle`.
    quiet: Pin<Box<Sleep>>,
    /// Whether the connection may be read now (it is paused or limited once it asks for
    /// more cheap answers than its share).
    pacing: Arc<pacing::Connection>,
    /// Fires at the end of a pacing pause.
    pause: Pin<Box<Sleep>>,
    /// Its seat in its client's request-path lane, given up as it closes.
    _seat: Seat,
}

/// The requests open on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    quiet_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            quiet_since: Mutex::new(Instant::now()),
        })
    }

    /// Requests open on the connection now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts a request as open until the returned guard is dropped.
    pub(super) fn enter(self: &Arc<Self>) -> OpenRequest {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest(Arc::clone(self))
    }

    /// When the connection will have had no request for `max`: `None` while one is open.
    fn quiet_until(&self, max: Duration) -> Option<Instant> {
        let since = *self.quiet_since.lock().unwrap_or_else(|p| p.into_inner());
        // Read after the timestamp: a request that ended in between has moved it already.
        (self.open() == 0).then_some(since + max)
    }
}

/// One open request on a connection; dropped when its response has been sent (or dropped).
pub(super) struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut since = self.0.quiet_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// What tonic knows of a [`GuardedSocket`] connection: its addresses, and its [`Activity`].
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Local and remote addresses.
    pub tcp: TcpConnectInfo,
    /// The requests open on it.
    pub activity: Arc<Activity>,
    /// Its pacing state, charged with its cheap answers.
    pub pacing: Arc<pacing::Connection>,
}

impl PeerInfo {
    /// The connection's info, from a request's extensions (plain or TLS).
    pub(super) fn of<B>(request: &http::Request<B>) -> Option<&PeerInfo> {
        let extensions = request.extensions();
        extensions.get::<PeerInfo>().or_else(|| {
            extensions
                .get::<tonic::transport::server::TlsConnectInfo<PeerInfo>>()
                .map(|tls| tls.get_ref())
        })
    }

    /// The connection's pacing state and the peer's address, from a request's extensions
    /// (for [`super::PacingLayer`]).
    pub fn pacing_of<B>(
        request: &http::Request<B>,
    ) -> Option<(Arc<pacing::Connection>, Option<std::net::IpAddr>)> {
        Self::of(request).map(|peer| {
            let address = peer.tcp.remote_addr().map(|a| a.ip());
            (Arc::clone(&peer.pacing), address)
        })
    }

    /// The connection's activity, from a request's extensions.
    pub(super) fn activity_of<B>(request: &http::Request<B>) -> Option<Arc<Activity>> {
        Self::of(request).map(|peer| Arc::clone(&peer.activity))
    }
}

/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE_LEN: usize = 24;

impl GuardedSocket {
    pub(super) fn new(
        stream: TcpStream,
        replay: Vec<u8>,
        place: Place,
        evicted: oneshot::Receiver<()>,
        limits: &ConnectionLimits,
        pacing: Arc<pacing::Connection>,
        seat: Seat,
    ) -> Self {
        let now = Instant::now();
        Self {
            stream,
            replay,
            place,
            evicted: Some(evicted),
            handshake_left: PREFACE_LEN,
            handshake: Box::pin(tokio::time::sleep_until(now + limits.handshake_timeout)),
            idle_timeout: limits.idle_timeout,
            last_read: now,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            activity: Activity::new(),
            max_connection_idle: limits.max_connection_idle,
            quiet: Box::pin(tokio::time::sleep_until(
                now + limits.max_connection_idle.unwrap_or(limits.idle_timeout),
            )),
            pacing,
            pause: Box::pin(tokio::time::sleep_until(now)),
            _seat: seat,
        }
    }

    /// Counts `read` bytes read: the connection is alive, and started once its preface is in.
    fn after_read(&mut self, read: usize) {
        if read > 0 {
            self.last_read = Instant::now();
            if self.handshake_left > 0 {
                self.handshake_left = self.handshake_left.saturating_sub(read);
                if self.handshake_left == 0 {
                    self.place.started();
                    self.evicted = None;
                }
            }
        }
    }

    /// Fails once a deadline has passed; otherwise registers for the next one.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.handshake_left > 0 {
            if self.handshake.as_mut().poll(cx).is_ready() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer did not start its connection within the handshake timeout",
                ));
            }
            let evicted = match &mut self.evicted {
                Some(evicted) => Pin::new(evicted).poll(cx).is_ready(),
                // Already evicted: a oneshot must not be polled again once it has fired.
                None => true,
            };
            if evicted {
                self.evicted = None;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "evicted at the connection cap before it started",
                ));
            }
        }
        // The idle timer is moved only when it fires, not on every read: a read costs a
        // timestamp, not a timer update.
        while self.idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_read + self.idle_timeout;
            if deadline <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer sent nothing within the idle timeout",
                ));
            }
            self.idle.as_mut().reset(deadline);
        }
        if let Some(max) = self.max_connection_idle {
            while self.quiet.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                let deadline = self.activity.quiet_until(max).unwrap_or(now + max);
                if deadline <= now {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request on the connection within max_connection_idle",
                    ));
                }
                self.quiet.as_mut().reset(deadline);
            }
        }
        Ok(())
    }
}

impl AsyncRead for GuardedSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // hyper always has a read pending on a live connection, so deadlines checked here are
        // noticed when they pass (the timers wake this task).
        this.check_deadlines(cx)?;
        let before = buf.filled().len();
        if !this.replay.is_empty() {
            // A few hundred bytes at most: the preface and SETTINGS, read once, not paced.
            let take = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..take]);
            this.replay.drain(..take);
            this.after_read(buf.filled().len() - before);
            return Poll::Ready(Ok(()));
        }
        let limit = loop {
            match this.pacing.gate(cx.waker()) {
                ReadGate::Open => break None,
                ReadGate::Limited(bytes) => break Some(bytes),
                ReadGate::PausedUntil(until) => {
                    // Not reading is what makes a flood cost its sender: its requests wait in
                    // its own buffers. The timer (or admission's room signal) wakes this read,
                    // and the gate then says how much it may take.
                    this.pause.as_mut().reset(until);
                    ready!(this.pause.as_mut().poll(cx));
                }
            }
        };
        match limit {
            Some(bytes) => {
                // A paced connection brings a few requests at a time, not all it buffered.
                let mut small = [0u8; MAX_LIMITED_READ_BYTES];
                let bytes = bytes.min(MAX_LIMITED_READ_BYTES).min(buf.remaining());
                let mut small = ReadBuf::new(&mut small[..bytes]);
                ready!(Pin::new(&mut this.stream).poll_read(cx, &mut small))?;
                buf.put_slice(small.filled());
                if !small.filled().is_empty() {
                    this.pacing.after_limited_read();
                }
            }
            None => ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?,
        }
        this.after_read(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for GuardedSocket {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo {
            tcp: self.stream.connect_info(),
            activity: Arc::clone(&self.activity),
            pacing: Arc::clone(&self.pacing),
        }
    }
}
