//! Bounds on what one peer can make the server hold, so that abusive or broken clients
//! (thousands of idle sockets, slowloris, rapid-reset floods, huge headers, clients that never
//! read) cannot take the server away from normal ones.
//!
//! Three places enforce them, outermost first:
//! - [`incoming`]: the accept loop. A connection cap ([`Gate`]): at the cap, a new connection
//!   evicts the oldest one that has not sent a byte yet, or if every one has, it is closed as
//!   soon as it is accepted; so file descriptors and per-connection memory stay bounded, silent
//!   sockets cannot lock real clients out, and the server never reaches `EMFILE` (accept errors
//!   back off instead of spinning).
//!   Each accepted socket is a [`Guarded`] one: it must send its first bytes (the HTTP/2
//!   preface, or a TLS hello) within the handshake timeout, and is closed after the idle
//!   timeout without a single byte from the peer, or after `max_connection_idle` without an
//!   open request (a peer that completed HTTP/2 and answers pings, but never asks for
//!   anything, is still idle: gRPC's `MAX_CONNECTION_IDLE`). Requests are counted per
//!   connection through its [`PeerInfo`], which tonic puts in every request's extensions.
//! - [`apply`]: HTTP/2 limits on tonic's server builder (streams per connection, header list
//!   size, reset-stream guards, windows, frame size, keepalive pings that find peers which stopped
//!   answering).
//! - [`WholeRequestLayer`]: a VectorIndex request's body must arrive whole within a timeout
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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tower::Layer;
use tower::layer::util::Stack;

use crate::config::Config;

/// Connection-level and HTTP/2 bounds (the `--max-connections` ... flags).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once. At the cap a new connection evicts the oldest one that has
    /// not sent a byte yet, or, if there is none, is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes (the HTTP/2 preface, or a TLS hello).
    pub handshake_timeout: Duration,
    /// A connection from which no byte arrives for this long is closed. Longer than
    /// keepalive interval + timeout, so a live client, which answers pings, never looks idle.
    pub idle_timeout: Duration,
    /// Time a VectorIndex request's body has to arrive whole once its headers have.
    pub request_read_timeout: Duration,
    /// Bytes of request bodies the server holds at once, read but not yet answered; a body
    /// that would exceed it waits (within its read timeout). At least one largest message.
    pub request_buffer_bytes: usize,
    /// Largest header list (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE), in bytes.
    pub max_header_bytes: u32,
    /// Streams reset by the peer before the server accepted them, per connection, before the
    /// connection is closed with ENHANCE_YOUR_CALM (hyper's rapid-reset guard).
    pub max_pending_reset_streams: usize,
    /// Streams the server had to reset for protocol errors, per connection, before the
    /// connection is closed (RUSTSEC-2024-0003).
    pub max_local_error_resets: usize,
    /// HTTP/2 stream flow-control window, in bytes: what one stream may push unread.
    pub stream_window_bytes: u32,
    /// HTTP/2 connection flow-control window, in bytes: what one connection may push unread.
    pub connection_window_bytes: u32,
    /// Largest HTTP/2 frame the server accepts, in bytes.
    pub max_frame_bytes: u32,
    /// Interval of HTTP/2 pings; a peer that does not answer one within the keepalive timeout
    /// is disconnected.
    pub keepalive_interval: Duration,
    /// Time a peer has to answer a ping.
    pub keepalive_timeout: Duration,
    /// A connection with no request open for this long is closed (`None`: never). Closing
    /// it is safe: nothing is in flight on it, and gRPC clients reconnect on their next call.
    pub max_connection_idle: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            // Far above what a load rig's clients open (connection pools of tens), far below
            // a typical RLIMIT_NOFILE of a server process.
            max_connections: 4096,
            // A real client sends its preface in the first round trip.
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            // A 32 MiB upsert over a slow link still fits; a stalled body does not hold on.
            request_read_timeout: Duration::from_secs(10),
            // Reading bodies before admission takes them out of HTTP/2 flow control, which
            // bounded them before: this bound replaces it. Eight largest messages; thousands
            // of ordinary (kilobyte) requests.
            request_buffer_bytes: 256 * 1024 * 1024,
            // hyper's default, made explicit: gRPC metadata (auth tokens included) is far smaller.
            max_header_bytes: 16 * 1024,
            // h2's default (20), made explicit: tonic leaves it to h2.
            max_pending_reset_streams: 20,
            // hyper's default (1024); explicit because tonic otherwise passes "no limit".
            max_local_error_resets: 1024,
            // hyper's defaults (1 MiB each): enough for full speed on a LAN, and bounds the
            // memory one connection can fill with data the server has not read yet.
            stream_window_bytes: 1024 * 1024,
            connection_window_bytes: 1024 * 1024,
            // The HTTP/2 minimum and h2's default: larger frames buy nothing for gRPC.
            max_frame_bytes: 16 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            // A client that keeps a connection for its next call within minutes keeps it; a
            // pool of connections opened and then left alone frees its places under the cap.
            max_connection_idle: Some(Duration::from_secs(300)),
        }
    }
}

/// Applies the HTTP/2 limits (and the whole-request layer) to tonic's server builder.
pub fn apply<L>(builder: Server<L>, config: &Config) -> Server<Stack<WholeRequestLayer, L>> {
    let limits = &config.connection_limits;
    builder
        // Bounds the streams one connection can open; admission bounds the work they cause.
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        // Oversized header blocks are refused (431 + REFUSED_STREAM) instead of buffered.
        .http2_max_header_list_size(limits.max_header_bytes)
        // Rapid reset (CVE-2023-44487): streams opened and reset before they are accepted.
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
        // A peer that keeps provoking stream errors is disconnected.
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_resets))
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .max_frame_size(limits.max_frame_bytes)
        // Pings find dead or frozen peers whose connections would otherwise hold streams forever.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // Outermost layer: a request reaches routing (and admission) only once whole.
        .layer(WholeRequestLayer::new(
            limits.request_read_timeout,
            // One gRPC message and its 5-byte frame header.
            config.max_message_bytes.saturating_add(5),
            limits.request_buffer_bytes,
        ))
}

/// The listener's accepted connections, capped and guarded by `limits`.
pub fn incoming(listener: TcpListener, limits: &ConnectionLimits) -> Incoming {
    let inner = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        // TCP keepalive finds peers that vanished without a FIN even when HTTP/2 pings are off.
        .with_keepalive(Some(Duration::from_secs(60)));
    Incoming {
        inner,
        gate: Gate::new(limits.max_connections),
        limits: *limits,
        backoff: None,
    }
}

/// Connections beyond the cap that may exist for a moment, while the ones they evicted close.
const EVICTION_SLACK: usize = 64;

/// Counts open connections against the cap, and knows which have not started yet.
#[derive(Debug)]
pub struct Gate {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    evicted: AtomicU64,
    full: AtomicBool,
    next_id: AtomicU64,
    /// Connections that have not sent their first bytes yet, oldest first, each with the
    /// sender that evicts it.
    starting: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

impl Gate {
    /// A gate admitting `max` connections at once (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            full: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            starting: Mutex::new(BTreeMap::new()),
        })
    }

    /// Takes a place for one connection; at the cap, by evicting the oldest connection that
    /// has not started yet. `None`: refuse this one.
    ///
    /// Eviction is what keeps a flood of silent sockets from locking real clients out until
    /// the handshake timeout: a real client starts within its first round trip, so only
    /// connections that have sent nothing are given up, and they have invested nothing.
    pub fn enter(self: &Arc<Self>) -> Option<(Place, oneshot::Receiver<()>)> {
        let take = |limit: usize| {
            self.open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                    (open < limit).then_some(open + 1)
                })
                .is_ok()
        };
        if take(self.max) {
            self.full.store(false, Ordering::Relaxed);
            return Some(self.place());
        }
        if take(self.max + EVICTION_SLACK) {
            let oldest = self.starting().pop_first();
            if let Some((_, evict)) = oldest {
                // The evicted connection fails its next read and gives its place back.
                let _ = evict.send(());
                self.evicted.fetch_add(1, Ordering::Relaxed);
                return Some(self.place());
            }
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        // One warning per episode of being full, not one per refused connection: a flood
        // must not turn into a flood of log lines.
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_connections = self.max,
                "connection cap reached with every connection started; refusing new ones"
            );
        }
        None
    }

    fn place(self: &Arc<Self>) -> (Place, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (evict, evicted) = oneshot::channel();
        self.starting().insert(id, evict);
        (
            Place {
                gate: Arc::clone(self),
                id,
            },
            evicted,
        )
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        // The map stays consistent whatever panicked while holding it: every operation on it
        // is a single insert or remove.
        self.starting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections refused at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections evicted before they started, to make room at the cap, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// One connection's place under the cap, given back on drop.
#[derive(Debug)]
pub struct Place {
    gate: Arc<Gate>,
    id: u64,
}

impl Place {
    /// The connection has started: it can no longer be evicted.
    fn started(&self) {
        self.gate.starting().remove(&self.id);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.started();
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accept errors such as EMFILE repeat at once while their cause lasts; waiting this long
/// before accepting again keeps the accept loop from spinning on them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepted connections under the cap, each a [`Guarded`] socket.
pub struct Incoming {
    inner: TcpIncoming,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// The cap's counters.
    pub fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }
}

impl Stream for Incoming {
    type Item = Result<Guarded, io::Error>;

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
                        let guarded = Guarded::new(stream, place, evicted, &this.limits);
                        return Poll::Ready(Some(Ok(guarded)));
                    }
                }
            }
        }
    }
}

/// An accepted socket that fails (and so is closed by hyper) when its peer is too slow to
/// start or falls silent. It holds its place under the cap until dropped.
pub struct Guarded {
    stream: TcpStream,
    place: Place,
    /// Fires when the gate evicts this connection; `None` once started (or evicted).
    evicted: Option<oneshot::Receiver<()>>,
    /// Bytes still expected before the handshake deadline (the 24-byte HTTP/2 preface).
    handshake_left: usize,
    handshake: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_read: Instant,
    idle: Pin<Box<Sleep>>,
    /// Requests open on this connection, counted by [`WholeRequest`].
    activity: Arc<Activity>,
    max_connection_idle: Option<Duration>,
    /// Fires when the connection may have been without a request for `max_connection_idle`.
    quiet: Pin<Box<Sleep>>,
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
    fn enter(self: &Arc<Self>) -> OpenRequest {
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
struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut since = self.0.quiet_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// What tonic knows of a [`Guarded`] connection: its addresses, and its [`Activity`].
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Local and remote addresses.
    pub tcp: TcpConnectInfo,
    /// The requests open on it.
    pub activity: Arc<Activity>,
}

impl PeerInfo {
    /// The connection's activity, from a request's extensions (plain or TLS).
    fn activity_of<B>(request: &http::Request<B>) -> Option<Arc<Activity>> {
        let extensions = request.extensions();
        extensions
            .get::<PeerInfo>()
            .or_else(|| {
                extensions
                    .get::<tonic::transport::server::TlsConnectInfo<PeerInfo>>()
                    .map(|tls| tls.get_ref())
            })
            .map(|peer| Arc::clone(&peer.activity))
    }
}

/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE_LEN: usize = 24;

impl Guarded {
    fn new(
        stream: TcpStream,
        place: Place,
        evicted: oneshot::Receiver<()>,
        limits: &ConnectionLimits,
    ) -> Self {
        let now = Instant::now();
        Self {
            stream,
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

impl AsyncRead for Guarded {
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
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read > 0 {
            this.last_read = Instant::now();
            if this.handshake_left > 0 {
                this.handshake_left = this.handshake_left.saturating_sub(read);
                if this.handshake_left == 0 {
                    this.place.started();
                    this.evicted = None;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Guarded {
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

impl Connected for Guarded {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo {
            tcp: self.stream.connect_info(),
            activity: Arc::clone(&self.activity),
        }
    }
}

/// Requests under this prefix are read whole before they go further. Others are not: health's
/// Watch and reflection are streams whose request bodies stay open by design.
const WHOLE_PREFIX: &str = "/vecrig.v1.VectorIndex/";

/// Reads each VectorIndex request's body whole, within a timeout, a size bound and a shared
/// budget of buffered bytes, before passing the request on; see the module docs for why.
#[derive(Debug, Clone)]
pub struct WholeRequestLayer {
    read_timeout: Duration,
    max_bytes: usize,
    budget: Arc<Semaphore>,
}

impl WholeRequestLayer {
    /// Bodies up to `max_bytes` each, read within `read_timeout`, `buffer_bytes` of them held
    /// at once (raised to `max_bytes` if below, so that every allowed body can be read).
    pub fn new(read_timeout: Duration, max_bytes: usize, buffer_bytes: usize) -> Self {
        let permits = buffer_bytes.max(max_bytes).min(Semaphore::MAX_PERMITS);
        Self {
            read_timeout,
            max_bytes,
            budget: Arc::new(Semaphore::new(permits)),
        }
    }
}

impl<S> Layer<S> for WholeRequestLayer {
    type Service = WholeRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WholeRequest {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`WholeRequestLayer`].
#[derive(Debug, Clone)]
pub struct WholeRequest<S> {
    inner: S,
    layer: WholeRequestLayer,
}

impl<S> tower::Service<http::Request<Body>> for WholeRequest<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one to call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Every request, of every service, counts as activity on its connection until its
        // response has been sent (a health Watch stays open for as long as it streams).
        let open = PeerInfo::activity_of(&request).map(|a| a.enter());
        let hold = move |response: http::Response<Body>| match open {
            Some(open) => response.map(|body| Body::new(Holding { body, _open: open })),
            None => response,
        };
        if !request.uri().path().starts_with(WHOLE_PREFIX) {
            let call = inner.call(request);
            return Box::pin(async move { call.await.map(hold) });
        }
        let WholeRequestLayer {
            read_timeout,
            max_bytes,
            budget,
        } = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let reading = read_whole(body, max_bytes, &budget);
            let status = match tokio::time::timeout(read_timeout, reading).await {
                Ok(Ok((bytes, held))) => {
                    let whole = http::Request::from_parts(parts, Body::new(Whole(Some(bytes))));
                    let response = inner.call(whole).await;
                    // The body's bytes count until the request is answered (decoded, queued
                    // in admission, served): only then are they freed.
                    drop(held);
                    return response.map(hold);
                }
                Ok(Err(ReadError::TooLarge)) => Status::resource_exhausted(format!(
                    "request too large: more than {max_bytes} bytes"
                )),
                // The peer reset the stream or the connection broke: nobody reads the answer.
                Ok(Err(ReadError::Body(error))) => {
                    Status::cancelled(format!("request body not received: {error}"))
                }
                Err(_) => Status::deadline_exceeded(format!(
                    "request body not received within {}",
                    humantime::format_duration(read_timeout)
                )),
            };
            Ok(hold(status.into_http()))
        })
    }
}

/// A response body that keeps its request counted as open on its connection until it is
/// sent whole (or dropped).
struct Holding {
    body: Body,
    _open: OpenRequest,
}

impl tonic::codegen::Body for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

enum ReadError {
    TooLarge,
    Body(tonic::Status),
}

/// The body's bytes, and the budget they hold.
async fn read_whole(
    mut body: Body,
    max_bytes: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ReadError> {
    use tonic::codegen::Body as _;
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(ReadError::Body)?;
        // Request trailers carry nothing for unary gRPC; only data is kept.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > max_bytes {
            return Err(ReadError::TooLarge);
        }
        // Waiting here leaves the rest of the body in HTTP/2 flow control: the peer is slowed
        // down, not buffered. `data.len()` is at most one frame (<= 16 MiB), so fits a u32.
        if !data.is_empty() {
            let permit = Arc::clone(budget)
                .acquire_many_owned(data.len() as u32)
                .await
                .map_err(|_| ReadError::TooLarge)?;
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
        }
        // The usual request is one DATA frame: keep it without copying.
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(first) = first.take() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok((first.unwrap_or_else(|| Bytes::from(rest)), held))
}

/// A request body already read whole.
struct Whole(Option<Bytes>);

impl tonic::codegen::Body for Whole {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_evicts_the_oldest_unstarted_connection_at_its_cap() {
        let gate = Gate::new(2);
        let (a, mut a_evicted) = gate.enter().expect("first");
        let (b, mut b_evicted) = gate.enter().expect("second");
        b.started();
        // At the cap, a third connection takes the place of the oldest one not started (a).
        let (c, _c_evicted) = gate.enter().expect("third, by eviction");
        assert!(a_evicted.try_recv().is_ok(), "a is told to go");
        assert!(b_evicted.try_recv().is_err(), "b, started, stays");
        assert_eq!(
            (gate.open(), gate.evicted()),
            (3, 1),
            "over the cap until a closes"
        );
        drop(a);
        assert_eq!(gate.open(), 2);
        // Everyone started: nobody to evict, so the next one is refused.
        c.started();
        assert!(gate.enter().is_none(), "refused");
        assert_eq!(gate.refused(), 1);
        drop(b);
        assert!(gate.enter().is_some(), "a freed place is reused");
    }

    #[tokio::test]
    async fn a_body_is_read_whole_across_frames_and_bounded() {
        let chunks = || {
            tokio_stream::iter(
                [&b"abc"[..], b"de", b"f"]
                    .into_iter()
                    .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c)))),
            )
        };
        let body = |s| Body::new(http_body_util::StreamBody::new(s));
        let budget = Arc::new(Semaphore::new(6));
        let (whole, held) = match read_whole(body(chunks()), 6, &budget).await {
            Ok(read) => read,
            Err(_) => panic!("a body within the bounds is read"),
        };
        assert_eq!(whole, Bytes::from_static(b"abcdef"));
        assert_eq!(budget.available_permits(), 0, "the body holds its bytes");
        drop(held);
        assert_eq!(budget.available_permits(), 6, "and frees them when dropped");
        assert!(matches!(
            read_whole(body(chunks()), 5, &budget).await,
            Err(ReadError::TooLarge)
        ));
    }
}
