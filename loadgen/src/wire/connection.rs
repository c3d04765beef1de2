//! The hot path's HTTP/2 connections: a [`Target`] (address, TLS, the request URIs and
//! headers, shared by every thread) and, on each sending thread, a [`Channel`] of its own
//! connections, each re-established when lost.
//!
//! A request is one stream on one connection, sent from the task that wants it: no buffer
//! task between the caller and the connection (tonic's `Channel` is a `tower::Buffer`), no
//! task per request (hyper's client spawns one), no lock shared with another thread. The
//! connection's own task (h2's `Connection` future, with the keepalive pings) runs on the
//! same thread. A connection keeps at most the server's `max_concurrent_streams` streams
//! open; further requests wait here, before anything is sent, so a thread may have more
//! requests outstanding than its connections take at once, and the request's deadline covers
//! that wait too. Why here and not in h2's own queue of streams waiting to open: a request
//! dropped there (its deadline passed) is still sent when a stream frees, as HEADERS and DATA
//! followed at once by RST_STREAM. An overloaded server then reads work that nobody waits for,
//! and its rapid-reset guard (CVE-2023-44487: streams reset before the server accepted them)
//! closes the whole connection: measured in an open-model run at 10x a one-CPU server's
//! capacity, 31,655 of 59,078 requests ended UNAVAILABLE that way.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::Code;
use vecrig::client::{ConnectError, ConnectOptions, Metadata};

use super::grpc::{self, Answer, Encoder, Rpc};
use crate::workload::Op;

/// Flow-control windows we offer the server: large enough that a search answer never waits
/// for a window update, as hyper's defaults (2 MiB a stream, 5 MiB a connection).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Where and how to connect, and what every request carries; built once for the run.
#[derive(Clone)]
pub struct Target {
    /// `host:port`, as given.
    address: String,
    /// The local address connections are made from (a client identity of its own, as a
    /// server that shares capacity by peer address sees it); `None`: the system's choice.
    bind: Option<std::net::IpAddr>,
    /// For `https://`: the TLS client and the name the certificate must hold.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    keepalive: Duration,
    search: http::Uri,
    upsert: http::Uri,
    /// Content type, `te`, user agent and `--header`s; `grpc-timeout` is added per deadline.
    headers: HeaderMap,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The target `http://host:port` or `https://host:port` (rustls, ALPN h2, the system's
    /// roots or `options.ca_cert`, the name `options.tls_domain` or the host).
    pub fn new(
        target: &str,
        options: &ConnectOptions,
        metadata: &Metadata,
    ) -> Result<Self, ConnectError> {
        let invalid = |reason: String| ConnectError::InvalidTarget {
            target: target.to_string(),
            reason,
        };
        let uri: http::Uri = target.parse().map_err(|e| invalid(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => return Err(invalid(format!("scheme {other:?}: expected http or https"))),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("no host".into()))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let address = format!("{}:{port}", authority.host());
        let rpc_uri = |rpc: Rpc| {
            http::Uri::builder()
                .scheme(if https { "https" } else { "http" })
                .authority(authority.clone())
                .path_and_query(rpc.path())
                .build()
                .map_err(|e| invalid(e.to_string()))
        };
        let tls = if https {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = options.tls_domain.as_deref().unwrap_or(host).to_string();
            let name = ServerName::try_from(name).map_err(|e| invalid(format!("TLS: {e}")))?;
            Some((tls_connector(options).map_err(invalid)?, name))
        } else {
            None
        };
        let headers = grpc::request_headers(metadata).map_err(invalid)?;
        Ok(Self {
            address,
            bind: None,
            tls,
            connect_timeout: options.connect_timeout,
            keepalive: options.keepalive,
            search: rpc_uri(Rpc::Search)?,
            upsert: rpc_uri(Rpc::Upsert)?,
            headers,
        })
    }

    /// The same target as another client: connections from `bind` (when given) and these
    /// `metadata` on every request instead of the run's.
    pub fn as_client(
        &self,
        bind: Option<std::net::IpAddr>,
        metadata: &Metadata,
    ) -> Result<Self, String> {
        Ok(Self {
            bind: bind.or(self.bind),
            headers: grpc::request_headers(metadata)?,
            ..self.clone()
        })
    }

    /// The address connections are made from, when chosen.
    pub fn bind(&self) -> Option<std::net::IpAddr> {
        self.bind
    }

    /// The same target with other methods in place of vecrig's Search and Upsert: a
    /// templated target's `/package.Service/Method` paths.
    pub fn with_methods(mut self, search: &str, write: Option<&str>) -> Result<Self, String> {
        let uri = |path: &str| {
            let mut parts = self.search.clone().into_parts();
            parts.path_and_query = Some(path.parse().map_err(|e| format!("method {path}: {e}"))?);
            http::Uri::from_parts(parts).map_err(|e| format!("method {path}: {e}"))
        };
        let (search, upsert) = (uri(search)?, write.map(uri).transpose()?);
        self.search = search;
        if let Some(upsert) = upsert {
            self.upsert = upsert;
        }
        Ok(self)
    }

    fn uri(&self, rpc: Rpc) -> &http::Uri {
        match rpc {
            Rpc::Search => &self.search,
            Rpc::Upsert => &self.upsert,
        }
    }
}

/// A TCP connection to `address`, from `bind` when given: the socket is bound to it (port
/// 0) before connecting, to the first of the target's addresses of the same family.
async fn connect(address: &str, bind: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect(address).await;
    };
    let remote = tokio::net::lookup_host(address)
        .await?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("no address of {local}'s family")))?;
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(remote).await
}

/// A rustls client with ring (the provider tonic's `tls-ring` builds), offering only h2.
fn tls_connector(options: &ConnectOptions) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    match &options.ca_cert {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("TLS: --ca-cert: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("TLS: --ca-cert: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A connection attempt in progress; dropped unfinished (its request cancelled), it leaves
/// the connection Down and wakes the requests that were waiting for it.
struct ConnectAttempt<'a> {
    connection: &'a Connection,
    finished: bool,
}

impl Drop for ConnectAttempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            *self.connection.state.borrow_mut() = State::Down;
            self.connection.changed.notify_waiters();
        }
    }
}

/// One HTTP/2 connection, opened on first use and again after it is lost.
#[derive(Debug)]
struct Connection {
    target: Arc<Target>,
    state: RefCell<State>,
    /// Wakes the requests waiting while the connection is being (re-)established.
    changed: Notify,
    generations: Cell<u64>,
    /// Streams this thread has open on the connection (whatever its generation).
    open_streams: Cell<usize>,
    /// Wakes a request waiting for a stream when one closes.
    stream_closed: Notify,
}

#[derive(Debug)]
enum State {
    Down,
    Connecting,
    /// Up; `generation` tells this connection from its successors.
    Up {
        sender: SendRequest<Bytes>,
        generation: u64,
    },
}

impl Connection {
    fn new(target: Arc<Target>) -> Rc<Self> {
        Rc::new(Self {
            target,
            state: RefCell::new(State::Down),
            changed: Notify::new(),
            generations: Cell::new(0),
            open_streams: Cell::new(0),
            stream_closed: Notify::new(),
        })
    }

    /// The open connection's generation, after opening one if none is. Requests that arrive
    /// while it is being established wait for that one attempt and share its outcome.
    async fn sender(self: &Rc<Self>) -> Result<u64, Answer> {
        let changed = self.changed.notified();
        let connect = {
            let mut state = self.state.borrow_mut();
            match &*state {
                State::Up { generation, .. } => return Ok(*generation),
                State::Connecting => false,
                State::Down => {
                    *state = State::Connecting;
                    true
                }
            }
        };
        if !connect {
            changed.await;
            return match &*self.state.borrow() {
                State::Up { generation, .. } => Ok(*generation),
                _ => Err(Answer::code(Code::Unavailable, "cannot connect")),
            };
        }
        let generation = self.generations.get() + 1;
        self.generations.set(generation);
        // The request that started the attempt may be dropped before it ends (its deadline can
        // be shorter than the connect timeout, and a SYN to a vanished host is never answered):
        // then the guard puts the connection back to Down and wakes the waiters, or every later
        // request would wait on an attempt that no longer exists until its own deadline.
        let mut attempt = ConnectAttempt {
            connection: self,
            finished: false,
        };
        let opened = tokio::time::timeout(self.target.connect_timeout, self.open(generation))
            .await
            .unwrap_or_else(|_| Err("connect timeout".into()));
        attempt.finished = true;
        let result = match opened {
            Ok(sender) => {
                *self.state.borrow_mut() = State::Up { sender, generation };
                Ok(generation)
            }
            Err(e) => {
                *self.state.borrow_mut() = State::Down;
                Err(Answer::code(Code::Unavailable, e))
            }
        };
        self.changed.notify_waiters();
        result
    }

    /// TCP (no Nagle delay), TLS if asked, the HTTP/2 handshake; the connection's task is
    /// spawned on this thread.
    async fn open(self: &Rc<Self>, generation: u64) -> Result<SendRequest<Bytes>, String> {
        let tcp = connect(&self.target.address, self.target.bind)
            .await
            .map_err(|e| format!("connect {}: {e}", self.target.address))?;
        let _ = tcp.set_nodelay(true);
        match &self.target.tls {
            None => self.handshake(tcp, generation).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                self.handshake(tls, generation).await
            }
        }
    }

    async fn handshake<T>(
        self: &Rc<Self>,
        io: T,
        generation: u64,
    ) -> Result<SendRequest<Bytes>, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<T, Bytes>(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let ping = connection.ping_pong();
        let keepalive = self.target.keepalive;
        let this: Weak<Self> = Rc::downgrade(self);
        tokio::task::spawn_local(async move {
            // Pings every `keepalive`; one unanswered within min(keepalive, 10 s) drops the
            // connection, so a cut network is noticed and the next request reconnects.
            let alive = async move {
                let Some(mut ping) = ping else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(keepalive).await;
                    let wait = keepalive.min(Duration::from_secs(10));
                    let pong = tokio::time::timeout(wait, ping.ping(h2::Ping::opaque())).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = &mut connection => {}
                () = alive => {}
            }
            if let Some(this) = this.upgrade() {
                this.lost(generation);
            }
        });
        Ok(sender)
    }

    /// Forgets connection `generation` (if it is still the current one): the next request
    /// opens a new one.
    fn lost(&self, generation: u64) {
        let mut state = self.state.borrow_mut();
        if matches!(&*state, State::Up { generation: g, .. } if *g == generation) {
            *state = State::Down;
        }
    }

    /// Opens a stream for `request` on connection `generation` (the one just returned by
    /// [`stream_slot`](Self::stream_slot), with no await in between) and hands it the frame.
    ///
    /// The connection's own sender is used in place, rather than a clone per request: a
    /// clone and its drop each lock the connection's stream store, for nothing. Requests
    /// wait for a stream in [`stream_slot`](Self::stream_slot), so h2's own queue of streams
    /// waiting to open is only met in the moment before the server's first SETTINGS say how
    /// many it takes (h2 assumes no limit until then): a sender with a stream still queued
    /// there is not ready, and this request then gets a clone of its own, queued behind it.
    /// Nothing waits here for readiness (so no waker is lost).
    fn open_stream(
        &self,
        generation: u64,
        request: http::Request<()>,
        frame: Bytes,
    ) -> Result<h2::client::ResponseFuture, h2::Error> {
        let mut state = self.state.borrow_mut();
        let sender = match &mut *state {
            State::Up {
                sender,
                generation: g,
            } if *g == generation => sender,
            // Cannot happen (the caller has not awaited since it learnt the generation), and
            // would mean the connection is gone: UNAVAILABLE, as any lost connection.
            _ => return Err(h2::Reason::NO_ERROR.into()),
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let (response, mut body) = match sender.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => sender.send_request(request, false)?,
            std::task::Poll::Ready(Err(error)) => return Err(error),
            std::task::Poll::Pending => sender.clone().send_request(request, false)?,
        };
        // The frame is already in memory (and shared with any retry), so it is handed over
        // whole: h2 sends what the windows allow and the rest as they open, without a round
        // of capacity requests through the connection task for every request.
        body.send_data(frame, true)?;
        Ok(response)
    }

    /// Waits, sending nothing, until the connection is up and has room for one more stream
    /// under the server's `max_concurrent_streams`; the slot is given back when the returned
    /// guard drops (the answer read, or the request given up). A request whose deadline
    /// passes while it waits is answered DEADLINE_EXCEEDED here, unsent: the caller's own
    /// timer may fire in the same turn as the wake-up that frees its stream, and would then
    /// reset the stream just opened.
    async fn stream_slot(
        self: &Rc<Self>,
        expires: tokio::time::Instant,
    ) -> Result<(u64, StreamSlot), Answer> {
        loop {
            // Registered before the check, so a stream closing in between is not missed.
            let closed = self.stream_closed.notified();
            let generation = self.sender().await?;
            let limit = match &*self.state.borrow() {
                State::Up { sender, .. } => sender.current_max_send_streams(),
                // Cannot happen (nothing awaited since `sender` saw it up): as a lost one.
                _ => return Err(Answer::code(Code::Unavailable, "connection lost")),
            };
            if self.open_streams.get() < limit {
                self.open_streams.set(self.open_streams.get() + 1);
                let slot = StreamSlot {
                    connection: Rc::clone(self),
                };
                return Ok((generation, slot));
            }
            closed.await;
            if tokio::time::Instant::now() >= expires {
                return Err(Answer::code(
                    Code::DeadlineExceeded,
                    "deadline passed waiting for a stream",
                ));
            }
        }
    }

    /// One call on this connection; the answer's message is appended to `keep` when given.
    /// `asked` is when the caller asked for it, `expires` when its deadline passes.
    async fn call(
        self: &Rc<Self>,
        mut request: http::Request<()>,
        frame: Bytes,
        (asked, expires): (tokio::time::Instant, tokio::time::Instant),
        keep: Option<&mut BytesMut>,
    ) -> Answer {
        let (generation, _stream) = match self.stream_slot(expires).await {
            Ok(slot) => slot,
            Err(answer) => return answer,
        };
        let now = tokio::time::Instant::now();
        if now.duration_since(asked) > Duration::from_millis(1) {
            // It waited for a connection or a stream: the server is told the time left, not
            // the whole deadline, so that it does not start work the client will not wait for.
            request.headers_mut().insert(
                "grpc-timeout",
                grpc::timeout_header(expires.saturating_duration_since(now)),
            );
        }
        let sent = self.open_stream(generation, request, frame);
        let answer = match sent {
            Ok(response) => exchange(response, keep).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(answer) => answer,
            Err(error) => {
                // A reset concerns one stream; anything else (GOAWAY, I/O, a connection
                // error) means this connection will take no more requests.
                if !error.is_reset() {
                    self.lost(generation);
                }
                Answer::from_h2(&error)
            }
        }
    }
}

/// One stream's place on a connection, held from before its request is sent until its
/// answer is read or it is given up.
struct StreamSlot {
    connection: Rc<Connection>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let open = &self.connection.open_streams;
        open.set(open.get().saturating_sub(1));
        self.connection.stream_closed.notify_one();
    }
}

/// Reads the answer to a request sent on a stream: its status; the answer's body (its gRPC
/// frames) is kept in `keep` when given (a sampled search), else dropped unread.
async fn exchange(
    response: h2::client::ResponseFuture,
    mut keep: Option<&mut BytesMut>,
) -> Result<Answer, h2::Error> {
    let (parts, mut body) = response.await?.into_parts();
    if let Some(answer) = Answer::from_headers(&parts.headers) {
        return Ok(answer); // trailers-only: an error, or OK with no message
    }
    let mut received = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        received += chunk.len();
        if let Some(keep) = keep.as_deref_mut() {
            keep.extend_from_slice(&chunk);
        }
        // Hand the window back at once, or the server stalls once it has sent a window's worth.
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(match body.trailers().await? {
        Some(trailers) => match Answer::from_headers(&trailers) {
            Some(answer) if answer.code == Code::Ok && received == 0 => {
                Answer::code(Code::Internal, "missing response message")
            }
            Some(answer) => answer,
            None => Answer::from_http(parts.status),
        },
        None => Answer::from_http(parts.status),
    })
}

/// One sending thread's connections to the target, taken in turn, and its encoder.
#[derive(Debug)]
pub struct Channel {
    target: Arc<Target>,
    connections: Vec<Rc<Connection>>,
    next: Cell<usize>,
    encoder: RefCell<Encoder>,
    /// The request headers for the last deadline used (scenarios may change it).
    headers: RefCell<(Duration, HeaderMap)>,
}

impl Channel {
    /// `connections` connections (at least one) to `target`, none opened yet.
    pub fn new(target: Arc<Target>, connections: usize) -> Self {
        let headers = target.headers.clone();
        Self {
            connections: (0..connections.max(1))
                .map(|_| Connection::new(Arc::clone(&target)))
                .collect(),
            target,
            next: Cell::new(0),
            encoder: RefCell::default(),
            headers: RefCell::new((Duration::MAX, headers)),
        }
    }

    /// Opens every connection now, so the first requests do not pay for it; a failure is
    /// left for the requests to meet (and count).
    pub async fn connect(&self) {
        for connection in &self.connections {
            let _ = connection.sender().await;
        }
    }

    /// The request's RPC and frame, encoded once for all its attempts.
    pub fn encode(&self, op: &Op) -> (Rpc, Bytes) {
        let mut encoder = self.encoder.borrow_mut();
        match op {
            Op::Search(request) => (Rpc::Search, encoder.frame(request)),
            Op::Upsert(request) | Op::Durable(request, _) => (Rpc::Upsert, encoder.frame(request)),
            Op::Call(call) if call.is_write() => (Rpc::Upsert, encoder.frame_encoded(&call.body)),
            Op::Call(call) => (Rpc::Search, encoder.frame_encoded(&call.body)),
            // Never sent: the engine stops a user at `Done`.
            Op::Done => (Rpc::Search, Bytes::new()),
        }
    }

    /// One attempt of `rpc` with `frame` on the next connection, telling the server the
    /// `deadline` (the caller enforces it).
    pub async fn call(&self, rpc: Rpc, frame: Bytes, deadline: Duration) -> Answer {
        self.call_keeping(rpc, frame, deadline, None).await
    }

    /// As [`call`](Self::call), keeping the answer's message (its gRPC frame's payload) in
    /// `keep`: for the sampled searches of a templated target, whose ids are read from it.
    pub async fn call_keeping(
        &self,
        rpc: Rpc,
        frame: Bytes,
        deadline: Duration,
        keep: Option<&mut BytesMut>,
    ) -> Answer {
        let asked = tokio::time::Instant::now();
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.target.uri(rpc).clone();
        *request.headers_mut() = {
            let mut headers = self.headers.borrow_mut();
            if headers.0 != deadline {
                headers
                    .1
                    .insert("grpc-timeout", grpc::timeout_header(deadline));
                headers.0 = deadline;
            }
            headers.1.clone()
        };
        let i = self.next.get();
        self.next.set((i + 1) % self.connections.len());
        let connection = Rc::clone(&self.connections[i]);
        connection
            .call(request, frame, (asked, asked + deadline), keep)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A server allowing one stream per connection, answering each request after `hold`;
    /// counts the streams it accepted.
    async fn one_stream_server(
        hold: Duration,
    ) -> (String, Arc<AtomicUsize>, Rc<RefCell<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test setup");
        let address = format!("http://{}", listener.local_addr().expect("test setup"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        let timeouts = Rc::new(RefCell::new(Vec::new()));
        let seen = Rc::clone(&timeouts);
        tokio::task::spawn_local(async move {
            let (socket, _) = listener.accept().await.expect("test setup");
            let mut connection = h2::server::Builder::new()
                .max_concurrent_streams(1)
                .handshake::<_, Bytes>(socket)
                .await
                .expect("test setup");
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let timeout = request.headers().get("grpc-timeout");
                seen.borrow_mut()
                    .push(timeout.map_or(String::new(), |t| t.to_str().unwrap_or_default().into()));
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(hold).await;
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(())
                        .expect("test setup");
                    let _ = respond.send_response(response, true);
                });
            }
        });
        (address, accepted, timeouts)
    }

    /// Requests beyond the server's `max_concurrent_streams` wait unsent, and one whose
    /// deadline passes while it waits is never sent: not as a stream reset the moment it
    /// opens, which an overloaded server reads as work and its rapid-reset guard as an attack.
    #[test]
    fn requests_that_expire_waiting_for_a_stream_are_never_sent() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test setup");
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let (address, accepted, timeouts) = one_stream_server(Duration::from_millis(300)).await;
            let target = Target::new(&address, &ConnectOptions::default(), &Metadata::default())
                .expect("target");
            let channel = Rc::new(Channel::new(Arc::new(target), 1));
            channel.connect().await;
            // The server's SETTINGS (one stream) arrive after the handshake.
            tokio::time::sleep(Duration::from_millis(100)).await;

            let deadline = Duration::from_millis(100);
            let calls: Vec<_> = (0..5)
                .map(|_| {
                    let channel = Rc::clone(&channel);
                    tokio::task::spawn_local(async move {
                        tokio::time::timeout(
                            deadline,
                            channel.call(Rpc::Search, Bytes::from_static(b""), deadline),
                        )
                        .await
                        .map(|answer| answer.code)
                    })
                })
                .collect();
            for call in calls {
                // The one sent times out at the caller; those that waited say why themselves.
                let code = call.await.expect("test setup");
                assert!(
                    matches!(code, Err(_) | Ok(Code::DeadlineExceeded)),
                    "{code:?}"
                );
            }
            // Long after the first stream closed: nothing else was sent.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                1,
                "only the first request was sent"
            );

            // The connection is still usable, and a request that can wait is served.
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                channel.call(Rpc::Search, Bytes::from_static(b""), Duration::from_secs(5)),
            )
            .await
            .expect("answered");
            assert_eq!(answer.code, Code::Ok, "{answer:?}");
            assert_eq!(accepted.load(Ordering::SeqCst), 2);

            // One that waited for a stream tells the server the time it has left.
            let second = {
                let channel = Rc::clone(&channel);
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    channel
                        .call(Rpc::Search, Bytes::from_static(b""), Duration::from_secs(5))
                        .await
                })
            };
            let first = channel
                .call(Rpc::Search, Bytes::from_static(b""), Duration::from_secs(5))
                .await;
            let second = second.await.expect("test setup");
            assert_eq!((first.code, second.code), (Code::Ok, Code::Ok));
            let timeouts = timeouts.borrow();
            let millis = |t: &str| -> u64 {
                let (n, unit) = t.split_at(t.len() - 1);
                let n: u64 = n.parse().expect("test setup");
                match unit {
                    "m" => n,
                    "u" => n / 1_000,
                    "n" => n / 1_000_000,
                    "S" => n * 1_000,
                    _ => panic!("unit of {t}"),
                }
            };
            let told: Vec<u64> = timeouts[2..].iter().map(|t| millis(t)).collect();
            assert!(
                told[0] > 4_900,
                "the first is told its whole deadline: {timeouts:?}"
            );
            assert!(
                told[1] <= 4_750,
                "the second waited some 300 ms for the stream: {timeouts:?}"
            );
        });
    }
}
