//! The hot path's HTTP/2 connections: a [`Target`] (address, TLS, the request URIs and
//! headers, shared by every thread) and, on each sending thread, a [`Channel`] of its own
//! connections, each re-established when lost.
//!
//! A request is one stream on one connection, sent from the task that wants it: no buffer
//! task between the caller and the connection (tonic's `Channel` is a `tower::Buffer`), no
//! task per request (hyper's client spawns one), no lock shared with another thread. The
//! connection's own task ([`Session`], with the keepalive pings) runs on the same thread. A
//! connection keeps at most the server's `max_concurrent_streams` streams open; further
//! requests wait here, before anything is sent, so a thread may have more requests
//! outstanding than its connections take at once, and the request's deadline covers that wait
//! too. Why nothing queues below this wait (as the `h2` crate, which this client replaced,
//! queues streams waiting to open): a request dropped there (its deadline passed) would still
//! be sent when a stream frees, as HEADERS and DATA followed at once by RST_STREAM. An
//! overloaded server then reads work that nobody waits for, and its rapid-reset guard
//! (CVE-2023-44487: streams reset before the server accepted them) closes the whole
//! connection, and every request on it ends UNAVAILABLE: under an open-model flood, about
//! half of them.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::Code;
use vecrig::client::{ConnectError, ConnectOptions, Metadata};

use super::frame;
use super::grpc::{self, Answer, Rpc};
use super::session::Session;
use crate::plan::workload::Op;

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
    https: bool,
    /// `:authority`.
    authority: String,
    /// The `:path`s of the search and write methods.
    search: String,
    upsert: String,
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
            https,
            authority: authority.to_string(),
            search: Rpc::Search.path().to_string(),
            upsert: Rpc::Upsert.path().to_string(),
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
        let path = |path: &str| {
            let valid: http::uri::PathAndQuery =
                path.parse().map_err(|e| format!("method {path}: {e}"))?;
            if !valid.as_str().starts_with('/') {
                return Err(format!("method {path}: expected /package.Service/Method"));
            }
            Ok(valid.as_str().to_string())
        };
        let (search, upsert) = (path(search)?, write.map(path).transpose()?);
        self.search = search;
        if let Some(upsert) = upsert {
            self.upsert = upsert;
        }
        Ok(self)
    }

    /// The header block of a request for `rpc`, telling the server `timeout`.
    fn header_block(&self, rpc: Rpc, timeout: Duration) -> Bytes {
        let path = match rpc {
            Rpc::Search => &self.search,
            Rpc::Upsert => &self.upsert,
        };
        let mut headers = self.headers.clone();
        headers.insert("grpc-timeout", grpc::timeout_header(timeout));
        frame::request_block(self.https, &self.authority, path, &headers)
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
        session: Session,
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
            // Built only here, not on the common path above: nothing else runs on this thread
            // between the look at the state and this wait, so the attempt's end is not missed.
            self.changed.notified().await;
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
        let opened = tokio::time::timeout(self.target.connect_timeout, self.open())
            .await
            .unwrap_or_else(|_| Err("connect timeout".into()));
        attempt.finished = true;
        let result = match opened {
            Ok(session) => {
                *self.state.borrow_mut() = State::Up {
                    session,
                    generation,
                };
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

    /// TCP (no Nagle delay), TLS if asked, HTTP/2 up to the server's first SETTINGS; the
    /// connection's task is spawned on this thread.
    async fn open(self: &Rc<Self>) -> Result<Session, String> {
        let tcp = connect(&self.target.address, self.target.bind)
            .await
            .map_err(|e| format!("connect {}: {e}", self.target.address))?;
        let _ = tcp.set_nodelay(true);
        // When the connection stops taking streams (GOAWAY, lost), the requests waiting for a
        // stream on it look again, and find it gone.
        let this: Weak<Self> = Rc::downgrade(self);
        let draining = Box::new(move || {
            if let Some(this) = this.upgrade() {
                this.stream_closed.notify_waiters();
            }
        });
        let keepalive = self.target.keepalive;
        let session = match &self.target.tls {
            None => {
                let (read, write) = tcp.into_split();
                Session::start(read, write, keepalive, draining)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let (read, write) = tokio::io::split(tls);
                Session::start(read, write, keepalive, draining)
            }
        };
        session
            .settled()
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        Ok(session)
    }

    /// Forgets connection `generation` (if it is still the current one): the next request
    /// opens a new one. The old one finishes the streams it has, then closes.
    fn lost(&self, generation: u64) {
        let mut state = self.state.borrow_mut();
        if matches!(&*state, State::Up { generation: g, .. } if *g == generation) {
            *state = State::Down;
        }
    }

    /// Waits, sending nothing, until the connection is up and has room for one more stream
    /// under the server's `max_concurrent_streams`; the slot is given back when the returned
    /// guard drops (the answer read, or the request given up). A request whose deadline
    /// passes while it waits is answered DEADLINE_EXCEEDED here, unsent: the caller's own
    /// timer may fire in the same turn as the wake-up that frees its stream, and would then
    /// reset the stream just opened. Returns the connection's generation, the slot, and
    /// whether the request waited (for a connection or a stream) on its way.
    async fn stream_slot(
        self: &Rc<Self>,
        expires: tokio::time::Instant,
    ) -> Result<(u64, StreamSlot, bool), Answer> {
        let mut waited = !matches!(&*self.state.borrow(), State::Up { .. });
        loop {
            let generation = self.sender().await?;
            let limit = match &*self.state.borrow() {
                State::Up { session, .. } if session.accepts() => Some(session.max_streams()),
                State::Up { .. } => None,
                // Cannot happen (nothing awaited since `sender` saw it up): as a lost one.
                _ => return Err(Answer::code(Code::Unavailable, "connection lost")),
            };
            let Some(limit) = limit else {
                // It went away (GOAWAY, or lost): the next turn opens a new one.
                self.lost(generation);
                waited = true;
                continue;
            };
            if self.open_streams.get() < limit {
                self.open_streams.set(self.open_streams.get() + 1);
                let slot = StreamSlot {
                    connection: Rc::clone(self),
                };
                return Ok((generation, slot, waited));
            }
            // Full. Nothing can close a stream between the look above and this wait (both run
            // in this task's turn on the connection's one thread), so waiting only now misses
            // nothing, and the common case builds no waiter at all.
            self.stream_closed.notified().await;
            waited = true;
            if tokio::time::Instant::now() >= expires {
                return Err(Answer::code(
                    Code::DeadlineExceeded,
                    "deadline passed waiting for a stream",
                ));
            }
        }
    }

    /// One call on this connection with the header `block`; the answer's message is appended
    /// to `keep` when given. `asked` is when the caller asked for it, `expires` when its
    /// deadline passes.
    async fn call(
        self: &Rc<Self>,
        (rpc, block): (Rpc, Bytes),
        frame: Bytes,
        (asked, expires): (tokio::time::Instant, tokio::time::Instant),
        keep: Option<&mut BytesMut>,
    ) -> Answer {
        let (generation, _stream, waited) = match self.stream_slot(expires).await {
            Ok(slot) => slot,
            Err(answer) => return answer,
        };
        // Read the clock only after a wait (the common case reads none here).
        let now = waited.then(tokio::time::Instant::now);
        let block = match now {
            Some(now) if now.duration_since(asked) > Duration::from_millis(1) => {
                // It waited for a connection or a stream: the server is told the time left,
                // not the whole deadline, so that it does not start work the client will not
                // wait for.
                self.target
                    .header_block(rpc, expires.saturating_duration_since(now))
            }
            _ => block,
        };
        let call = match &*self.state.borrow() {
            State::Up {
                session,
                generation: g,
            } if *g == generation => session.open(&block, frame, keep.is_some()),
            // Cannot happen (nothing awaited since the slot was taken): as a lost one.
            _ => Err(Answer::code(Code::Unavailable, "connection lost")),
        };
        match call {
            Ok(call) => {
                let (answer, body) = call.await;
                if let (Some(keep), Some(body)) = (keep, body) {
                    keep.extend_from_slice(&body);
                }
                answer
            }
            Err(answer) => answer,
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

/// One sending thread's connections to the target, taken in turn.
#[derive(Debug)]
pub struct Channel {
    target: Arc<Target>,
    connections: Vec<Rc<Connection>>,
    next: Cell<usize>,
    /// The header blocks of Search and Upsert for the last deadline used (scenarios may
    /// change it), encoded once.
    blocks: RefCell<Option<(Duration, [Bytes; 2])>>,
}

impl Channel {
    /// `connections` connections (at least one) to `target`, none opened yet.
    pub fn new(target: Arc<Target>, connections: usize) -> Self {
        Self {
            connections: (0..connections.max(1))
                .map(|_| Connection::new(Arc::clone(&target)))
                .collect(),
            target,
            next: Cell::new(0),
            blocks: RefCell::new(None),
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
        match op {
            Op::Call(call) if call.is_write() => (Rpc::Upsert, call.frame.clone()),
            Op::Call(call) => (Rpc::Search, call.frame.clone()),
            // Never sent: the scheduler stops a user at `Done`.
            Op::Done => (Rpc::Search, Bytes::new()),
        }
    }

    /// One attempt of `rpc` with `frame` on the next connection, telling the server the
    /// `deadline` (the caller enforces it).
    pub async fn call(&self, rpc: Rpc, frame: Bytes, deadline: Duration) -> Answer {
        let asked = tokio::time::Instant::now();
        self.call_keeping(rpc, frame, (asked, deadline), None).await
    }

    /// As [`call`](Self::call), asked at `asked` (a clock the caller has already read), and
    /// keeping the answer's message (its gRPC frame's payload) in `keep` when given: for the
    /// sampled searches of a templated target, whose ids are read from it.
    pub async fn call_keeping(
        &self,
        rpc: Rpc,
        frame: Bytes,
        (asked, deadline): (tokio::time::Instant, Duration),
        keep: Option<&mut BytesMut>,
    ) -> Answer {
        let block = {
            let mut blocks = self.blocks.borrow_mut();
            let current = match blocks.take() {
                Some((told, current)) if told == deadline => current,
                _ => [Rpc::Search, Rpc::Upsert].map(|rpc| self.target.header_block(rpc, deadline)),
            };
            let block = current[rpc as usize].clone();
            *blocks = Some((deadline, current));
            block
        };
        let i = self.next.get();
        self.next.set((i + 1) % self.connections.len());
        let connection = Rc::clone(&self.connections[i]);
        connection
            .call((rpc, block), frame, (asked, asked + deadline), keep)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers a request OK after `hold`, trailers-only.
    async fn answer_ok_after(hold: Duration, mut respond: h2::server::SendResponse<Bytes>) {
        tokio::time::sleep(hold).await;
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(())
            .expect("test setup");
        let _ = respond.send_response(response, true);
    }

    /// Runs `test` on a current-thread runtime in a `LocalSet`, as a sending thread runs.
    fn on_a_sending_thread(test: impl std::future::Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test setup");
        tokio::task::LocalSet::new().block_on(&runtime, test);
    }

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
            while let Some(Ok((request, respond))) = connection.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let timeout = request.headers().get("grpc-timeout");
                seen.borrow_mut()
                    .push(timeout.map_or(String::new(), |t| t.to_str().unwrap_or_default().into()));
                tokio::task::spawn_local(answer_ok_after(hold, respond));
            }
        });
        (address, accepted, timeouts)
    }

    /// A server that reads each request's whole body (returning flow-control capacity as it
    /// goes, from the default 64 KiB windows) and answers with a message of its own, and a
    /// trailer that tells how many bytes it read.
    async fn echo_length_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test setup");
        let address = format!("http://{}", listener.local_addr().expect("test setup"));
        tokio::task::spawn_local(async move {
            let (socket, _) = listener.accept().await.expect("test setup");
            let mut connection = h2::server::handshake(socket).await.expect("test setup");
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                tokio::task::spawn_local(async move {
                    let mut body = request.into_body();
                    let mut read = 0;
                    while let Some(Ok(chunk)) = body.data().await {
                        read += chunk.len();
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("test setup");
                    let mut stream = respond.send_response(response, false).expect("test setup");
                    let message = Bytes::from_static(&[0, 0, 0, 0, 3, 1, 2, 3]);
                    stream.send_data(message, false).expect("test setup");
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().expect("test setup"));
                    let told = format!("read%20{read}");
                    trailers.insert("grpc-message", told.parse().expect("test setup"));
                    stream.send_trailers(trailers).expect("test setup");
                });
            }
        });
        address
    }

    /// A request body far larger than the server's windows is sent as they open, split into
    /// frames of the allowed size; the answer's message, status and percent-decoded message
    /// are read back, and its body kept when asked.
    #[test]
    fn bodies_larger_than_the_windows_are_sent_as_they_open() {
        on_a_sending_thread(async {
            let address = echo_length_server().await;
            let target = Target::new(&address, &ConnectOptions::default(), &Metadata::default())
                .expect("target");
            let channel = Rc::new(Channel::new(Arc::new(target), 1));
            let big = Bytes::from(vec![7u8; 300_000]);
            let calls: Vec<_> = (0..3)
                .map(|_| {
                    let (channel, big) = (Rc::clone(&channel), big.clone());
                    tokio::task::spawn_local(async move {
                        let mut keep = BytesMut::new();
                        let answer = channel
                            .call_keeping(
                                Rpc::Upsert,
                                big,
                                (tokio::time::Instant::now(), Duration::from_secs(10)),
                                Some(&mut keep),
                            )
                            .await;
                        (answer, keep)
                    })
                })
                .collect();
            for call in calls {
                let (answer, keep) = tokio::time::timeout(Duration::from_secs(10), call)
                    .await
                    .expect("answered in time")
                    .expect("test setup");
                assert_eq!(answer.code, Code::Ok, "{answer:?}");
                assert_eq!(answer.message, "read 300000");
                assert_eq!(&keep[..], &[0, 0, 0, 0, 3, 1, 2, 3]);
            }
            let small = channel
                .call(Rpc::Search, Bytes::new(), Duration::from_secs(5))
                .await;
            assert_eq!((small.code, small.message.as_str()), (Code::Ok, "read 0"));
        });
    }

    /// A server that, on each connection, answers the first `per_connection` requests after
    /// `hold` and then goes away gracefully (GOAWAY); counts the connections it accepted.
    async fn draining_server(per_connection: usize, hold: Duration) -> (String, Rc<Cell<usize>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test setup");
        let address = format!("http://{}", listener.local_addr().expect("test setup"));
        let connections = Rc::new(Cell::new(0));
        let counted = Rc::clone(&connections);
        tokio::task::spawn_local(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.set(counted.get() + 1);
                tokio::task::spawn_local(async move {
                    let mut connection = h2::server::handshake(socket).await.expect("test setup");
                    let mut taken = 0;
                    while let Some(Ok((_, respond))) = connection.accept().await {
                        taken += 1;
                        if taken == per_connection {
                            connection.graceful_shutdown();
                        }
                        tokio::task::spawn_local(answer_ok_after(hold, respond));
                    }
                });
            }
        });
        (address, connections)
    }

    /// A server that drains its connection with GOAWAY (a graceful restart) answers the
    /// requests it took; the next requests go to a new connection, and none is lost.
    #[test]
    fn a_connection_drained_with_goaway_finishes_its_streams_and_is_replaced() {
        on_a_sending_thread(async {
            let (address, connections) = draining_server(3, Duration::from_millis(200)).await;
            let target = Target::new(&address, &ConnectOptions::default(), &Metadata::default())
                .expect("target");
            let channel = Rc::new(Channel::new(Arc::new(target), 1));
            for round in 0..3 {
                let calls: Vec<_> = (0..3)
                    .map(|_| {
                        let channel = Rc::clone(&channel);
                        tokio::task::spawn_local(async move {
                            channel
                                .call(Rpc::Search, Bytes::new(), Duration::from_secs(5))
                                .await
                        })
                    })
                    .collect();
                for call in calls {
                    let answer = call.await.expect("test setup");
                    // Trailers-only OK: no message, which is the server's business here.
                    assert_eq!(answer.code, Code::Ok, "round {round}: {answer:?}");
                }
            }
            assert_eq!(connections.get(), 3, "one connection per round");
        });
    }

    /// Requests beyond the server's `max_concurrent_streams` wait unsent, and one whose
    /// deadline passes while it waits is never sent: not as a stream reset the moment it
    /// opens, which an overloaded server reads as work and its rapid-reset guard as an attack.
    #[test]
    fn requests_that_expire_waiting_for_a_stream_are_never_sent() {
        on_a_sending_thread(async {
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
