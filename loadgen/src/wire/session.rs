//! One HTTP/2 connection of the hot path, client side (RFC 9113), written for a load
//! generator: everything on one thread, no lock, no task per request.
//!
//! Why our own and not the `h2` crate: h2's connection task is most of a load generator's
//! instructions per request (HPACK-encoding each request's headers, copies through its frame
//! and stream stores); figures in `docs/benchmarks.md`. Here a request is its header block, encoded once
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
//! How a request ends: a [`StreamCall`] resolves to the [`Answer`] read as tonic reads it
//! ([`grpc`](super::grpc)); dropped unfinished (its deadline passed), it resets its stream with
//! CANCEL. A connection that dies takes every stream on it to UNAVAILABLE.
//!
//! What it enforces of a server it does not trust, and how each breach ends the calls, is
//! in [`receive`], which reads and judges what the server sends.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tonic::Code;

use super::frame::{self, reason, setting};
use super::grpc::{Answer, Messages};

mod receive;
mod state;

#[cfg(test)]
use receive::MAX_QUEUED_REPLIES;
use receive::{Ended, MAX_HEADER_LIST, decoder, dispatch};
use state::{CONNECTION_WINDOW, Inner, Phase, STREAM_WINDOW, Stream};

/// The largest stream id a client may use; past it, a new connection is needed.
const LAST_STREAM_ID: u32 = 0x7fff_ffff;

/// The owner's handle on a connection; dropping it closes the connection once its last
/// stream has ended.
#[derive(Debug)]
pub struct Session {
    inner: Rc<Inner>,
}

/// A request sent on a stream, resolving to its answer and, when asked for, the answer's
/// body (its gRPC frames).
#[derive(Debug)]
pub struct StreamCall {
    inner: Rc<Inner>,
    id: u32,
    done: bool,
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
    pub fn open(&self, block: &[u8], body: Bytes, keep: bool) -> Result<StreamCall, Answer> {
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
        Ok(StreamCall {
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

impl Future for StreamCall {
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

impl Drop for StreamCall {
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
    let mut calls: Vec<Result<StreamCall, Answer>> = (0..streams)
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
