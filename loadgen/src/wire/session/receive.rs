//! What the server sends, read and judged: frames dispatched to the connection's streams, and
//! what a client that does not trust its server (a proxy, a broken or hostile target)
//! enforces, so that a run neither hangs, nor panics, nor grows without bound, and each call
//! gets exactly one answer:
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

use std::task::Waker;

use bytes::{Buf, BytesMut};
use tonic::Code;

use super::super::frame::{self, Head, flag, kind, reason, setting};
use super::super::grpc::{self, Answer, Fields};
use super::state::{CONNECTION_WINDOW, Inner, STREAM_WINDOW, Stream};

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
pub(super) struct Violation {
    /// The HTTP/2 error code.
    pub(super) code: u32,
    /// What the server did.
    pub(super) why: String,
}

impl Violation {
    pub(super) fn protocol(why: impl Into<String>) -> Self {
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
pub(super) enum Ended {
    /// Closed, lost or silent: its calls end UNAVAILABLE (they may be retried).
    Lost(String),
    /// The server broke the protocol: its calls end INTERNAL.
    Violated(Violation),
}

impl Inner {
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
    pub(super) fn on_frame(&self, head: Head, payload: &[u8]) -> Result<(), Violation> {
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
pub(super) fn decoder() -> loona_hpack::Decoder<'static> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
    decoder
}

/// Dispatches every whole frame at the start of `buf` and drops them from it; what is left is
/// the start of a frame not yet whole.
pub(super) fn dispatch(inner: &Inner, buf: &mut BytesMut) -> Result<(), Ended> {
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
