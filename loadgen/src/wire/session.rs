//! One HTTP/2 connection of the hot path, client side (RFC 9113), written for a load
//! generator: everything on one thread, no lock, no task per request.
//!
//! Why our own and not the `h2` crate: measured with callgrind against a trivial RPC, h2's
//! connection task was 47% of the loadgen's instructions per request (HPACK-encoding the
//! request's headers 13%, copies through its frame and stream stores 10%), and the loadgen
//! spent 1.2-1.7x h2load's CPU per request. Here a request is its header block, encoded once
//! for the run ([`frame::request_block`]), and its gRPC frame, encoded once for all its
//! attempts, both copied into the connection's one output buffer; the connection's task writes
//! whatever has gathered in one `write`, and parses what it reads in place.
//!
//! What it does of HTTP/2: the preface and SETTINGS (push off, large receive windows),
//! the server's SETTINGS obeyed (`MAX_CONCURRENT_STREAMS`, `INITIAL_WINDOW_SIZE`,
//! `MAX_FRAME_SIZE`), flow control both ways (a request body larger than the server's windows
//! waits for WINDOW_UPDATE), HEADERS with CONTINUATION, padding, RST_STREAM both ways, PING
//! answered and sent as keepalive, GOAWAY (streams above the last one the server will process
//! fail UNAVAILABLE at once; the rest finish; no new stream opens). What it does not need:
//! push (refused in SETTINGS), priorities (ignored), server-initiated streams.
//!
//! How a request ends: a [`Call`] resolves to the [`Answer`] read as tonic reads it
//! ([`grpc`](super::grpc)); dropped unfinished (its deadline passed), it resets its stream with
//! CANCEL. A connection that dies takes every stream on it to UNAVAILABLE.
//!
//! What it enforces of a server it does not trust (a proxy, a broken or hostile target), so
//! that the run neither hangs, nor panics, nor grows without bound, and each call gets one
//! answer:
//! - connection errors (RFC 9113 §5.4.1; the connection closes after a GOAWAY with the code,
//!   and every stream still open on it ends INTERNAL): a frame over the 16 KiB
//!   `MAX_FRAME_SIZE` we keep (FRAME_SIZE_ERROR); control frames of the wrong size, on the
//!   wrong stream, or for a stream never opened (an even id, or one above the last we opened);
//!   a header block over [`MAX_HEADER_LIST`] before it is whole, interrupted, or that HPACK
//!   cannot decode (COMPRESSION_ERROR; the dynamic table is held to the 4 KiB default);
//!   SETTINGS out of their ranges (push enabled, a window over 2^31-1, a frame size outside
//!   16 KiB-16 MiB); a window grown past 2^31-1 or by 0; PUSH_PROMISE; and a server that sends
//!   PINGs or SETTINGS faster than it reads their answers ([`MAX_QUEUED_REPLIES`],
//!   ENHANCE_YOUR_CALM).
//! - stream errors (the call ends INTERNAL, its stream is reset, the connection stays): a
//!   decoded header list over [`MAX_HEADER_LIST`] (advertised in SETTINGS); a response without
//!   `:status`; DATA before the headers or after the stream's end; trailers that do not end
//!   the stream; a body that is not exactly one whole gRPC message, a compressed one (the
//!   request offers no compression), or one over [`grpc::MAX_MESSAGE`] (RESOURCE_EXHAUSTED).
//! - what is only dropped: frames for streams already closed (their calls gave up), unknown
//!   frame types and PRIORITY.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tonic::Code;

use super::frame::{self, Head, flag, kind, reason, setting};
use super::grpc::{self, Answer, Fields, Messages};

/// Flow-control windows we offer the server: large enough that a search answer never waits
/// for a window update (hyper's defaults: 2 MiB a stream, 5 MiB a connection). Received bytes
/// are given back once half a window's worth has gathered.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// The largest stream id a client may use; past it, a new connection is needed.
const LAST_STREAM_ID: u32 = 0x7fff_ffff;

/// The largest header list we accept (RFC 9113 §6.5.2: names, values and 32 bytes a field),
/// advertised in our SETTINGS; also the most a header block may hold, compressed, before it
/// is whole. A gRPC answer's headers and trailers are a few hundred bytes.
pub const MAX_HEADER_LIST: usize = 64 * 1024;

/// The HPACK dynamic table's size: the default, which we never raise.
const HEADER_TABLE_SIZE: usize = 4096;

/// Answers to the server's PINGs and SETTINGS that may wait unwritten: a server that keeps
/// sending them while it reads nothing would else grow the output without bound.
pub const MAX_QUEUED_REPLIES: usize = 1024 * 1024;

/// A connection error (RFC 9113 §5.4.1): the server broke the protocol, with the HTTP/2 error
/// code that tells it so.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    code: u32,
    why: String,
}

impl Violation {
    fn protocol(why: impl Into<String>) -> Self {
        Self {
            code: reason::PROTOCOL_ERROR,
            why: format!("PROTOCOL_ERROR: {}", why.into()),
        }
    }

    fn frame_size(what: &str) -> Self {
        Self {
            code: reason::FRAME_SIZE_ERROR,
            why: format!("FRAME_SIZE_ERROR: {what}"),
        }
    }

    fn flow_control(why: impl Into<String>) -> Self {
        Self {
            code: reason::FLOW_CONTROL_ERROR,
            why: format!("FLOW_CONTROL_ERROR: {}", why.into()),
        }
    }
}

/// Why a connection's task ended.
#[derive(Debug)]
enum Ended {
    /// Closed, lost or silent: its calls end UNAVAILABLE (they may be retried).
    Lost(String),
    /// The server broke the protocol: its calls end INTERNAL.
    Violated(Violation),
}

/// The owner's handle on a connection; dropping it closes the connection once its last
/// stream has ended.
#[derive(Debug)]
pub struct Session {
    inner: Rc<Inner>,
}

/// A request sent on a stream, resolving to its answer and, when asked for, the answer's
/// body (its gRPC frames).
#[derive(Debug)]
pub struct Call {
    inner: Rc<Inner>,
    id: u32,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Takes new streams.
    Open,
    /// GOAWAY received, out of stream ids, or the owner gone: the open streams finish, no
    /// new one starts.
    Draining,
    /// Gone: every stream has been answered.
    Closed,
}

struct Inner {
    /// Frames waiting to be written, in order.
    out: RefCell<BytesMut>,
    /// Wakes the writer when `out` fills from empty or the connection ends.
    writer: Notify,
    streams: RefCell<HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>>,
    /// Streams with request data waiting for a window, in the order they blocked.
    blocked: RefCell<VecDeque<u32>>,
    next_id: Cell<u32>,
    phase: Cell<Phase>,
    /// Why the connection closed (or is draining), for the answers it gives.
    why: RefCell<String>,
    owner_gone: Cell<bool>,
    /// The server's SETTINGS.
    max_streams: Cell<usize>,
    max_frame: Cell<usize>,
    initial_window: Cell<i64>,
    /// Our send window on the connection.
    window: Cell<i64>,
    /// Bytes received on the connection not yet given back with a WINDOW_UPDATE.
    unacked: Cell<u32>,
    /// The highest stream id opened (0: none); frames for streams above it are for streams
    /// never opened.
    last_opened: Cell<u32>,
    /// Bytes of answers to the server's PINGs and SETTINGS queued since the writer last took
    /// the output.
    replies: Cell<usize>,
    decoder: RefCell<loona_hpack::Decoder<'static>>,
    /// A header block waiting for its CONTINUATION frames: stream, HEADERS flags, fragments.
    partial: RefCell<Option<(u32, u8, BytesMut)>>,
    /// Set when the server's first SETTINGS arrive (or the connection ends).
    settings_seen: Cell<bool>,
    settled: Notify,
    pong: Notify,
    /// Called when the connection stops taking streams, so waiters look again.
    on_draining: Box<dyn Fn()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("phase", &self.phase.get())
            .field("streams", &self.streams.borrow().len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Stream {
    /// Our send window on the stream.
    window: i64,
    /// Request data not yet sent for want of a window.
    pending: Option<Bytes>,
    /// We have not sent END_STREAM yet.
    local_open: bool,
    /// The server has not sent END_STREAM (or a reset) yet.
    remote_open: bool,
    /// The response's `:status`, once its headers arrived.
    status: Option<u16>,
    /// The body, read as gRPC messages.
    body: Messages,
    /// The body, when the caller keeps it.
    keep: Option<BytesMut>,
    /// Bytes received on the stream not yet given back.
    unacked: u32,
    outcome: Option<Answer>,
    waker: Option<Waker>,
}

impl Session {
    /// Starts HTTP/2 on a connection already made (TCP, or TLS with ALPN h2) and spawns its
    /// task on this thread (a `LocalSet` must be running): the preface and our SETTINGS are
    /// the first thing it writes. `keepalive` is the interval of the PINGs that find a dead
    /// peer (one unanswered within min(keepalive, 10 s) closes the connection).
    /// `on_draining` is called whenever the connection stops taking new streams.
    pub fn start<R, W>(read: R, write: W, keepalive: Duration, on_draining: Box<dyn Fn()>) -> Self
    where
        R: AsyncRead + Unpin + 'static,
        W: AsyncWrite + Unpin + 'static,
    {
        let inner = Inner::new(on_draining);
        inner.writer.notify_one();
        tokio::task::spawn_local(drive(Rc::clone(&inner), read, write, keepalive));
        Self { inner }
    }

    /// Waits for the server's first SETTINGS (so that its stream limit is known before the
    /// first request), or fails with why the connection ended first.
    pub async fn settled(&self) -> Result<(), String> {
        loop {
            let settled = self.inner.settled.notified();
            if self.inner.settings_seen.get() {
                return Ok(());
            }
            if self.inner.phase.get() == Phase::Closed {
                return Err(self.inner.why.borrow().clone());
            }
            settled.await;
        }
    }

    /// Whether a new stream may open.
    pub fn accepts(&self) -> bool {
        self.inner.phase.get() == Phase::Open
    }

    /// The server's `MAX_CONCURRENT_STREAMS`.
    pub fn max_streams(&self) -> usize {
        self.inner.max_streams.get()
    }

    /// Opens a stream with the header `block` and sends `body` (as far as the windows allow;
    /// the rest as they open). `keep`: the answer's body is kept for the caller.
    pub fn open(&self, block: &[u8], body: Bytes, keep: bool) -> Result<Call, Answer> {
        let inner = &self.inner;
        if inner.phase.get() != Phase::Open {
            return Err(inner.unavailable());
        }
        let id = inner.next_id.get();
        if id >= LAST_STREAM_ID - 2 {
            // The last stream id this connection may use: it drains, the next is new.
            inner.drain("stream ids used up");
        } else {
            inner.next_id.set(id + 2);
        }
        inner.last_opened.set(id);
        let mut stream = Stream {
            window: inner.initial_window.get(),
            pending: None,
            local_open: true,
            remote_open: true,
            status: None,
            body: Messages::default(),
            keep: keep.then(BytesMut::new),
            unacked: 0,
            outcome: None,
            waker: None,
        };
        inner.write(|out| {
            frame::put_headers(out, id, block, inner.max_frame.get());
            inner.send_body(out, id, &mut stream, body);
        });
        inner.streams.borrow_mut().insert(id, stream);
        Ok(Call {
            inner: Rc::clone(inner),
            id,
            done: false,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inner.owner_gone.set(true);
        if self.inner.phase.get() == Phase::Open {
            self.inner.phase.set(Phase::Draining);
        }
        self.inner.finish_if_idle();
    }
}

impl Future for Call {
    type Output = (Answer, Option<BytesMut>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut streams = this.inner.streams.borrow_mut();
        let Some(stream) = streams.get_mut(&this.id) else {
            // Cannot happen (only the call removes its stream): as a lost connection.
            this.done = true;
            return Poll::Ready((this.inner.unavailable(), None));
        };
        if let Some(answer) = stream.outcome.take() {
            let stream = streams.remove(&this.id);
            drop(streams);
            this.done = true;
            let keep = stream.and_then(|stream| {
                this.inner.ended(this.id, &stream);
                stream.keep
            });
            return Poll::Ready((answer, keep));
        }
        if !stream
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            stream.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let stream = self.inner.streams.borrow_mut().remove(&self.id);
        if let Some(stream) = stream {
            self.inner.ended(self.id, &stream);
        }
    }
}

impl Inner {
    /// A connection's state before anything is read, its output holding the preface, our
    /// SETTINGS and the connection window's growth.
    fn new(on_draining: Box<dyn Fn()>) -> Rc<Self> {
        let mut out = BytesMut::with_capacity(64 * 1024);
        out.extend_from_slice(frame::PREFACE);
        frame::put_settings(
            &mut out,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (setting::MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
            ],
        );
        frame::put_window_update(
            &mut out,
            0,
            CONNECTION_WINDOW - frame::DEFAULT_WINDOW as u32,
        );
        Rc::new(Inner {
            out: RefCell::new(out),
            writer: Notify::new(),
            streams: RefCell::default(),
            blocked: RefCell::default(),
            next_id: Cell::new(1),
            phase: Cell::new(Phase::Open),
            why: RefCell::default(),
            owner_gone: Cell::new(false),
            // No limit until the server says (RFC 9113 §6.5.2); the caller waits for its
            // SETTINGS before the first request.
            max_streams: Cell::new(usize::MAX),
            max_frame: Cell::new(frame::DEFAULT_MAX_FRAME),
            initial_window: Cell::new(frame::DEFAULT_WINDOW),
            window: Cell::new(frame::DEFAULT_WINDOW),
            unacked: Cell::new(0),
            last_opened: Cell::new(0),
            replies: Cell::new(0),
            decoder: RefCell::new(decoder()),
            partial: RefCell::default(),
            settings_seen: Cell::new(false),
            settled: Notify::new(),
            pong: Notify::new(),
            on_draining,
        })
    }

    /// Appends frames to the output, waking the writer if it was idle.
    fn write(&self, put: impl FnOnce(&mut BytesMut)) {
        let mut out = self.out.borrow_mut();
        let was_empty = out.is_empty();
        put(&mut out);
        if was_empty && !out.is_empty() {
            self.writer.notify_one();
        }
    }

    fn unavailable(&self) -> Answer {
        let why = self.why.borrow();
        let why = if why.is_empty() {
            "connection closed"
        } else {
            why.as_str()
        };
        Answer::code(Code::Unavailable, why)
    }

    /// Sends as much of `body` as the windows allow, ending the stream if all of it went; the
    /// rest waits in the stream for a WINDOW_UPDATE.
    fn send_body(&self, out: &mut BytesMut, id: u32, stream: &mut Stream, body: Bytes) {
        let allowed = self.window.get().min(stream.window).max(0) as usize;
        let sent = body.len().min(allowed);
        let all = sent == body.len();
        if all || sent > 0 {
            frame::put_data(out, id, &body[..sent], self.max_frame.get(), all);
        }
        self.window.set(self.window.get() - sent as i64);
        stream.window -= sent as i64;
        if all {
            stream.local_open = false;
            stream.pending = None;
        } else {
            stream.pending = Some(body.slice(sent..));
            self.blocked.borrow_mut().push_back(id);
        }
    }

    /// After a window grew: sends what blocked streams can, in the order they blocked.
    fn unblock(&self) {
        let waiting: Vec<u32> = self.blocked.borrow_mut().drain(..).collect();
        if waiting.is_empty() {
            return;
        }
        let mut streams = self.streams.borrow_mut();
        self.write(|out| {
            for id in waiting {
                let Some(stream) = streams.get_mut(&id) else {
                    continue;
                };
                if let Some(body) = stream.pending.take() {
                    self.send_body(out, id, stream, body);
                }
            }
        });
    }

    /// A stream's call is over (answered, or given up): resets it if it is still open on
    /// either side, and finishes the connection if it was draining and this was its last.
    fn ended(&self, id: u32, stream: &Stream) {
        if (stream.local_open || stream.remote_open) && self.phase.get() != Phase::Closed {
            self.write(|out| frame::put_reset(out, id, reason::CANCEL));
        }
        self.finish_if_idle();
    }

    /// Stops new streams: GOAWAY, stream ids used up, or the owner gone.
    fn drain(&self, why: &str) {
        if self.phase.get() == Phase::Open {
            self.phase.set(Phase::Draining);
            *self.why.borrow_mut() = why.to_string();
            (self.on_draining)();
        }
    }

    /// A draining connection with no stream left is closed: the writer is told to stop.
    fn finish_if_idle(&self) {
        if self.phase.get() == Phase::Draining && self.streams.borrow().is_empty() {
            self.writer.notify_one();
        }
    }

    fn finished(&self) -> bool {
        self.phase.get() == Phase::Closed
            || (self.phase.get() == Phase::Draining && self.streams.borrow().is_empty())
    }

    /// Appends answers to the server's own frames (PING and SETTINGS acknowledgements),
    /// counting what waits unwritten.
    fn reply(&self, put: impl FnOnce(&mut BytesMut)) {
        let before = self.out.borrow().len();
        self.write(put);
        let added = self.out.borrow().len().saturating_sub(before);
        self.replies.set(self.replies.get() + added);
    }

    /// The connection is gone: every stream still waiting is answered UNAVAILABLE, or
    /// INTERNAL when the server broke the protocol.
    fn close(&self, ended: Ended) {
        let (why, code) = match ended {
            Ended::Lost(why) => (why, Code::Unavailable),
            Ended::Violated(violation) => (
                format!("HTTP/2 protocol violation by the server: {}", violation.why),
                Code::Internal,
            ),
        };
        let was = self.phase.replace(Phase::Closed);
        if self.why.borrow().is_empty() || was == Phase::Open || code == Code::Internal {
            *self.why.borrow_mut() = why;
        }
        let answer = match code {
            Code::Internal => Answer::code(code, self.why.borrow().clone()),
            _ => self.unavailable(),
        };
        let mut wakers = Vec::new();
        for stream in self.streams.borrow_mut().values_mut() {
            stream.local_open = false;
            stream.remote_open = false;
            if stream.outcome.is_none() {
                stream.outcome = Some(answer.clone());
                wakers.extend(stream.waker.take());
            }
        }
        self.settled.notify_waiters();
        wakers.into_iter().for_each(Waker::wake);
        (self.on_draining)();
    }

    /// Sets a stream's outcome (if it has none) and wakes its call.
    fn answer(stream: &mut Stream, answer: Answer) {
        if stream.outcome.is_none() {
            stream.outcome = Some(answer);
            if let Some(waker) = stream.waker.take() {
                waker.wake();
            }
        }
    }

    /// A stream error (RFC 9113 §5.4.2): the call ends INTERNAL; its stream is reset when the
    /// call takes the answer.
    fn broken(stream: &mut Stream, why: &str) {
        Self::answer(
            stream,
            Answer::code(Code::Internal, format!("HTTP/2 stream error: {why}")),
        );
    }

    /// Whether `id` names a stream this client never opened: the server's own (even; push is
    /// off), or above the last one opened.
    fn never_opened(&self, id: u32) -> bool {
        id.is_multiple_of(2) || id > self.last_opened.get()
    }

    /// A frame that belongs to an open or closed stream of ours: not the connection's, not one
    /// never opened.
    fn check_stream(&self, head: Head, what: &str) -> Result<(), Violation> {
        if head.stream == 0 {
            return Err(Violation::protocol(format!("{what} on stream 0")));
        }
        if self.never_opened(head.stream) {
            return Err(Violation::protocol(format!(
                "{what} for stream {}, never opened",
                head.stream
            )));
        }
        Ok(())
    }

    /// One frame from the server; an error is the connection's (it closes).
    fn on_frame(&self, head: Head, payload: &[u8]) -> Result<(), Violation> {
        if self.partial.borrow().is_some() && head.kind != kind::CONTINUATION {
            return Err(Violation::protocol("header block interrupted"));
        }
        match head.kind {
            kind::DATA => self.on_data(head, payload),
            kind::HEADERS => {
                self.check_stream(head, "HEADERS")?;
                let block = strip(head, payload, true)?;
                if head.flags & flag::END_HEADERS != 0 {
                    self.on_header_block(head.stream, head.flags, block)
                } else if block.len() > MAX_HEADER_LIST {
                    Err(too_long(block.len()))
                } else {
                    *self.partial.borrow_mut() =
                        Some((head.stream, head.flags, BytesMut::from(block)));
                    Ok(())
                }
            }
            kind::CONTINUATION => {
                let mut partial = self.partial.borrow_mut();
                let Some((stream, _, block)) = partial.as_mut() else {
                    return Err(Violation::protocol("CONTINUATION without HEADERS"));
                };
                if *stream != head.stream {
                    return Err(Violation::protocol("CONTINUATION of another stream"));
                }
                if block.len() + payload.len() > MAX_HEADER_LIST {
                    return Err(too_long(block.len() + payload.len()));
                }
                block.extend_from_slice(payload);
                if head.flags & flag::END_HEADERS == 0 {
                    return Ok(());
                }
                let (stream, flags, block) = partial.take().unwrap_or_default();
                drop(partial);
                self.on_header_block(stream, flags, &block)
            }
            kind::RST_STREAM => {
                let code = read_u32(payload, "RST_STREAM")?;
                self.check_stream(head, "RST_STREAM")?;
                if let Some(stream) = self.streams.borrow_mut().get_mut(&head.stream) {
                    stream.local_open = false;
                    stream.remote_open = false;
                    stream.pending = None;
                    Self::answer(stream, Answer::from_reset(code));
                }
                Ok(())
            }
            kind::SETTINGS => self.on_settings(head, payload),
            kind::PING => {
                if head.stream != 0 {
                    return Err(Violation::protocol("PING on a stream"));
                }
                let payload: [u8; 8] = payload
                    .try_into()
                    .map_err(|_| Violation::frame_size("PING"))?;
                if head.flags & flag::ACK != 0 {
                    self.pong.notify_one();
                } else {
                    self.reply(|out| frame::put_ping(out, true, payload));
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(Violation::protocol("GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err(Violation::frame_size("GOAWAY"));
                }
                let last = read_u32(payload, "GOAWAY")? & 0x7fff_ffff;
                let code = read_u32(&payload[4..], "GOAWAY")?;
                let why = format!("GOAWAY ({})", reason::name(code));
                let mut wakers = Vec::new();
                for (&id, stream) in self.streams.borrow_mut().iter_mut() {
                    if id > last && stream.outcome.is_none() {
                        // Never processed (RFC 9113 §6.8): safe to retry, hence UNAVAILABLE.
                        stream.local_open = false;
                        stream.remote_open = false;
                        stream.pending = None;
                        let message = format!("{why}: the server did not take the request");
                        stream.outcome = Some(Answer::code(Code::Unavailable, message));
                        wakers.extend(stream.waker.take());
                    }
                }
                wakers.into_iter().for_each(Waker::wake);
                self.drain(&why);
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(head, payload),
            kind::PUSH_PROMISE => Err(Violation::protocol(
                "PUSH_PROMISE, push refused in SETTINGS",
            )),
            // PRIORITY and unknown types are ignored, as RFC 9113 §5.5 asks.
            _ => Ok(()),
        }
    }

    fn on_window_update(&self, head: Head, payload: &[u8]) -> Result<(), Violation> {
        if payload.len() != 4 {
            return Err(Violation::frame_size("WINDOW_UPDATE"));
        }
        let increment = i64::from(read_u32(payload, "WINDOW_UPDATE")? & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(Violation::protocol("WINDOW_UPDATE of 0"));
            }
            let window = self.window.get() + increment;
            if window > frame::MAX_WINDOW {
                return Err(Violation::flow_control("connection window over 2^31-1"));
            }
            self.window.set(window);
        } else {
            self.check_stream(head, "WINDOW_UPDATE")?;
            if let Some(stream) = self.streams.borrow_mut().get_mut(&head.stream) {
                if increment == 0 {
                    Self::broken(stream, "WINDOW_UPDATE of 0");
                } else if stream.window + increment > frame::MAX_WINDOW {
                    Self::broken(stream, "FLOW_CONTROL_ERROR: stream window over 2^31-1");
                } else {
                    stream.window += increment;
                }
            }
        }
        self.unblock();
        Ok(())
    }

    fn on_data(&self, head: Head, payload: &[u8]) -> Result<(), Violation> {
        if head.stream == 0 {
            return Err(Violation::protocol("DATA on stream 0"));
        }
        // Flow control counts the whole payload, padding included.
        let unacked = self.unacked.get() + head.len as u32;
        if unacked >= CONNECTION_WINDOW / 2 {
            self.write(|out| frame::put_window_update(out, 0, unacked));
            self.unacked.set(0);
        } else {
            self.unacked.set(unacked);
        }
        let data = strip(head, payload, false)?;
        let mut streams = self.streams.borrow_mut();
        let Some(stream) = streams.get_mut(&head.stream) else {
            if self.never_opened(head.stream) {
                return Err(Violation::protocol(format!(
                    "DATA for stream {}, never opened",
                    head.stream
                )));
            }
            return Ok(()); // a stream we gave up: its data is dropped
        };
        if stream.outcome.is_some() {
            return Ok(()); // answered (reset, or broken): the rest is not read
        }
        if !stream.remote_open {
            Self::broken(stream, "DATA after the stream's end");
            return Ok(());
        }
        if stream.status.is_none() {
            Self::broken(stream, "DATA before the response's headers");
            return Ok(());
        }
        if let Err(answer) = stream.body.feed(data) {
            Self::answer(stream, answer);
            return Ok(());
        }
        if stream.body.count() > 1 {
            Self::answer(
                stream,
                grpc::checked(Answer::code(Code::Ok, ""), &stream.body),
            );
            return Ok(());
        }
        if let Some(keep) = stream.keep.as_mut() {
            // At most one message of at most grpc::MAX_MESSAGE, checked just above.
            keep.extend_from_slice(data);
        }
        if head.flags & flag::END_STREAM != 0 {
            stream.remote_open = false;
            // No trailers: the status is the HTTP one (gRPC's table).
            let answer = Answer::from_http(stream.status.unwrap_or(0));
            Self::answer(stream, answer);
        } else {
            stream.unacked += head.len as u32;
            if stream.unacked >= STREAM_WINDOW / 2 {
                let (id, unacked) = (head.stream, stream.unacked);
                stream.unacked = 0;
                self.write(|out| frame::put_window_update(out, id, unacked));
            }
        }
        Ok(())
    }

    /// A whole header block: decoded always (the server's HPACK table depends on it), then
    /// read as the response's headers or its trailers.
    fn on_header_block(&self, id: u32, flags: u8, block: &[u8]) -> Result<(), Violation> {
        let mut fields = Fields::default();
        let mut size = 0usize;
        self.decoder
            .borrow_mut()
            .decode_with_cb(block, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_HEADER_LIST {
                    fields.take(&name, &value);
                }
            })
            .map_err(|e| Violation {
                code: reason::COMPRESSION_ERROR,
                why: format!("COMPRESSION_ERROR: {e:?}"),
            })?;
        let mut streams = self.streams.borrow_mut();
        let Some(stream) = streams.get_mut(&id) else {
            return Ok(());
        };
        if stream.outcome.is_some() {
            return Ok(());
        }
        if !stream.remote_open {
            Self::broken(stream, "HEADERS after the stream's end");
            return Ok(());
        }
        if size > MAX_HEADER_LIST {
            let why = format!("a header list of {size} bytes, over the {MAX_HEADER_LIST} allowed");
            Self::broken(stream, &why);
            return Ok(());
        }
        let end = flags & flag::END_STREAM != 0;
        if end {
            stream.remote_open = false;
        }
        let answer = match stream.status {
            None => {
                // The response's headers: a status here is a trailers-only response.
                let Some(status) = fields.status else {
                    Self::broken(stream, "a response without :status");
                    return Ok(());
                };
                stream.status = Some(status);
                match fields.into_answer() {
                    Some(answer) => Some(answer),
                    None if end => Some(Answer::from_http(status)),
                    None => None,
                }
            }
            Some(_) if !end => {
                Self::broken(stream, "trailers that do not end the stream");
                return Ok(());
            }
            Some(status) => Some(match fields.into_answer() {
                Some(answer) => grpc::checked(answer, &stream.body),
                None => Answer::from_http(status),
            }),
        };
        if let Some(answer) = answer {
            Self::answer(stream, answer);
        }
        Ok(())
    }

    fn on_settings(&self, head: Head, payload: &[u8]) -> Result<(), Violation> {
        if head.stream != 0 {
            return Err(Violation::protocol("SETTINGS on a stream"));
        }
        if head.flags & flag::ACK != 0 {
            return match payload.is_empty() {
                true => Ok(()),
                false => Err(Violation::frame_size("SETTINGS acknowledgement")),
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err(Violation::frame_size("SETTINGS"));
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::ENABLE_PUSH if value != 0 => {
                    return Err(Violation::protocol("a server may not enable push"));
                }
                setting::MAX_CONCURRENT_STREAMS => self.max_streams.set(value as usize),
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return Err(Violation::flow_control("initial window over 2^31-1"));
                    }
                    let delta = i64::from(value) - self.initial_window.replace(i64::from(value));
                    for stream in self.streams.borrow_mut().values_mut() {
                        stream.window += delta;
                        if stream.window > frame::MAX_WINDOW {
                            return Err(Violation::flow_control("a stream window over 2^31-1"));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME..1 << 24).contains(&(value as usize)) {
                        return Err(Violation::protocol(format!("MAX_FRAME_SIZE {value}")));
                    }
                    self.max_frame.set(value as usize);
                }
                // HEADER_TABLE_SIZE bounds an encoder table we do not keep; the rest concern
                // a server.
                _ => {}
            }
        }
        self.reply(frame::put_settings_ack);
        self.unblock();
        if !self.settings_seen.replace(true) {
            self.settled.notify_waiters();
        }
        Ok(())
    }
}

/// What a server's bytes come to on a connection with `streams` requests open (every other
/// one keeping its answer, as a sampled search does), read `cut` bytes at a time (frames cut
/// across reads), the writer keeping up; the connection then ends as the input does. Each
/// request's answer and kept body, `None` for a request left without one (which must never
/// happen). The decoding paths of the network's input, with no socket and no runtime: for the
/// fuzz target `wire_decode` and the unit tests.
#[doc(hidden)]
pub fn answers_to(
    input: &[u8],
    streams: usize,
    cut: usize,
) -> Vec<Option<(Answer, Option<BytesMut>)>> {
    let inner = Inner::new(Box::new(|| {}));
    let session = Session {
        inner: Rc::clone(&inner),
    };
    let request = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let mut calls: Vec<Result<Call, Answer>> = (0..streams)
        .map(|i| session.open(b"", request.clone(), i % 2 == 0))
        .collect();
    let mut buf = BytesMut::new();
    let mut ended = None;
    for piece in input.chunks(cut.max(1)) {
        buf.extend_from_slice(piece);
        if let Err(why) = dispatch(&inner, &mut buf) {
            ended = Some(why);
            break;
        }
        inner.out.borrow_mut().clear();
        inner.replies.set(0);
    }
    let ended = ended.unwrap_or_else(|| match buf.is_empty() {
        true => Ended::Lost("connection closed by the server".into()),
        false => Ended::Lost("connection closed by the server inside a frame".into()),
    });
    inner.close(ended);
    let mut cx = Context::from_waker(Waker::noop());
    calls
        .iter_mut()
        .map(|call| match call {
            Ok(call) => match Pin::new(call).poll(&mut cx) {
                Poll::Ready(answer) => Some(answer),
                Poll::Pending => None,
            },
            Err(answer) => Some((answer.clone(), None)),
        })
        .collect()
}

/// Hashes a stream id with one multiplication (Fibonacci hashing): ids are ours, unique and
/// not chosen by anyone hostile, and SipHash, the default, was 1.8% of the loadgen's
/// instructions per request.
#[derive(Default)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The payload without padding (and, for HEADERS, without priority fields).
fn strip(head: Head, payload: &[u8], headers: bool) -> Result<&[u8], Violation> {
    let mut payload = payload;
    if head.flags & flag::PADDED != 0 {
        let (&pad, rest) = payload
            .split_first()
            .ok_or_else(|| Violation::protocol("padding"))?;
        payload = rest
            .get(..rest.len().saturating_sub(pad as usize))
            .filter(|_| (pad as usize) <= rest.len())
            .ok_or_else(|| Violation::protocol("padding"))?;
    }
    if headers && head.flags & flag::PRIORITY != 0 {
        payload = payload
            .get(5..)
            .ok_or_else(|| Violation::protocol("priority"))?;
    }
    Ok(payload)
}

fn read_u32(payload: &[u8], what: &str) -> Result<u32, Violation> {
    payload
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Violation::frame_size(what))
}

/// A header block that grew past [`MAX_HEADER_LIST`] before it was whole.
fn too_long(len: usize) -> Violation {
    Violation {
        code: reason::ENHANCE_YOUR_CALM,
        why: format!("a header block of {len} bytes and more, over the {MAX_HEADER_LIST} allowed"),
    }
}

/// The HPACK decoder of a connection, its dynamic table held to the size we allow.
fn decoder() -> loona_hpack::Decoder<'static> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
    decoder
}

/// The connection's task: reads and dispatches frames, writes what gathers, pings; ends when
/// any of them does, answering every stream still open.
async fn drive<R, W>(inner: Rc<Inner>, read: R, mut write: W, keepalive: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ended = tokio::select! {
        ended = read_frames(&inner, read) => ended,
        why = write_frames(&inner, &mut write) => Ended::Lost(why),
        why = keep_alive(&inner, keepalive) => Ended::Lost(why),
    };
    if let Ended::Violated(violation) = &ended {
        // Tell the server why (RFC 9113 §5.4.1), briefly: it may not be reading at all.
        let mut out = BytesMut::new();
        frame::put_goaway(&mut out, 0, violation.code);
        let told = async {
            write.write_all(&out).await?;
            write.flush().await?;
            write.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(100), told).await;
    }
    inner.close(ended);
}

async fn read_frames<R: AsyncRead + Unpin>(inner: &Inner, read: R) -> Ended {
    let mut frames = Frames::new(read);
    loop {
        match frames.next(inner).await {
            Ok(true) => {}
            Ok(false) => return Ended::Lost(inner.why.borrow().clone()),
            Err(ended) => return ended,
        }
    }
}

/// The server's side of a connection as frames: what was read and not yet dispatched.
struct Frames<R> {
    read: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    fn new(read: R) -> Self {
        Self {
            read,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Dispatches the whole frames read so far, then reads more; `false` once the connection
    /// is finished (draining, its last stream ended).
    async fn next(&mut self, inner: &Inner) -> Result<bool, Ended> {
        dispatch(inner, &mut self.buf)?;
        if inner.finished() {
            return Ok(false);
        }
        self.buf.reserve(frame::HEAD_LEN + frame::DEFAULT_MAX_FRAME);
        match self.read.read_buf(&mut self.buf).await {
            Ok(0) if self.buf.is_empty() => {
                Err(Ended::Lost("connection closed by the server".into()))
            }
            Ok(0) => Err(Ended::Lost(format!(
                "connection closed by the server inside a frame ({} bytes of it read)",
                self.buf.len()
            ))),
            Ok(_) => Ok(true),
            Err(e) => Err(Ended::Lost(format!("connection lost: {e}"))),
        }
    }
}

/// Dispatches every whole frame at the start of `buf` and drops them from it; what is left is
/// the start of a frame not yet whole.
fn dispatch(inner: &Inner, buf: &mut BytesMut) -> Result<(), Ended> {
    let mut at = 0;
    let result = loop {
        let Some(head) = Head::parse(&buf[at..]) else {
            break Ok(());
        };
        if head.len > frame::DEFAULT_MAX_FRAME {
            break Err(Ended::Violated(Violation::frame_size(&format!(
                "a frame of {} bytes",
                head.len
            ))));
        }
        let end = at + frame::HEAD_LEN + head.len;
        if buf.len() < end {
            break Ok(());
        }
        if let Err(violation) = inner.on_frame(head, &buf[at + frame::HEAD_LEN..end]) {
            break Err(Ended::Violated(violation));
        }
        at = end;
        if inner.replies.get() > MAX_QUEUED_REPLIES {
            break Err(Ended::Violated(Violation {
                code: reason::ENHANCE_YOUR_CALM,
                why: "ENHANCE_YOUR_CALM: the server sends PINGs or SETTINGS faster than it reads \
                      their answers"
                    .into(),
            }));
        }
    };
    buf.advance(at);
    result
}

async fn write_frames<W: AsyncWrite + Unpin>(inner: &Inner, write: &mut W) -> String {
    loop {
        let chunk = {
            let mut out = inner.out.borrow_mut();
            (!out.is_empty()).then(|| out.split())
        };
        match chunk {
            Some(chunk) => {
                inner.replies.set(0);
                let written = async {
                    write.write_all(&chunk).await?;
                    write.flush().await
                };
                if let Err(e) = written.await {
                    return format!("connection lost: {e}");
                }
            }
            None if inner.finished() => {
                let _ = write.shutdown().await;
                return inner.why.borrow().clone();
            }
            None => inner.writer.notified().await,
        }
    }
}

/// PINGs every `every`; returns when one goes unanswered within min(every, 10 s).
async fn keep_alive(inner: &Inner, every: Duration) -> String {
    if every.is_zero() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(every).await;
        inner.write(|out| frame::put_ping(out, false, *b"vecrig\0\0"));
        let wait = every.min(Duration::from_secs(10));
        if tokio::time::timeout(wait, inner.pong.notified())
            .await
            .is_err()
        {
            return "keepalive PING unanswered".into();
        }
    }
}

#[cfg(test)]
mod tests;
