//! HTTP/2 framing as the hot path needs it (RFC 9113): frame headers read and written, the
//! few control frames a client sends, and request header blocks encoded once.
//!
//! Request headers are encoded as HPACK literals that are never indexed and never Huffman
//! coded (RFC 7541 §6.2.2): always legal, so the encoder keeps no dynamic table that must stay
//! in step with the server's, and a block built once for a run is valid on every connection and
//! every stream. What that costs is a few bytes a request on loopback; what it saves is HPACK
//! encoding per request, which was 13% of the loadgen's instructions with the `h2` crate.
//! Responses are decoded with `loona-hpack`, which keeps the server's dynamic table.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderMap;

/// What a client sends first on a connection (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The length of a frame's header.
pub const HEAD_LEN: usize = 9;

/// The frame size every endpoint must accept; we never ask for more, so the server never
/// sends more, and we never send more than the server allows (`SETTINGS_MAX_FRAME_SIZE`).
pub const DEFAULT_MAX_FRAME: usize = 16_384;

/// The initial flow-control window of a stream and a connection until SETTINGS say otherwise.
pub const DEFAULT_WINDOW: i64 = 65_535;

/// Frame types (RFC 9113 §6).
pub mod kind {
    /// A stream's body.
    pub const DATA: u8 = 0x0;
    /// A header block's first frame.
    pub const HEADERS: u8 = 0x1;
    /// A stream ended early.
    pub const RST_STREAM: u8 = 0x3;
    /// An endpoint's settings, or their acknowledgement.
    pub const SETTINGS: u8 = 0x4;
    /// A stream the server would push (refused by this client).
    pub const PUSH_PROMISE: u8 = 0x5;
    /// A ping, or its answer.
    pub const PING: u8 = 0x6;
    /// The connection goes away.
    pub const GOAWAY: u8 = 0x7;
    /// A flow-control window grows.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// The rest of a header block.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// DATA, HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION: the header block is whole.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS: the payload is padded.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: the payload starts with priority fields.
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers.
pub mod setting {
    /// The HPACK dynamic table's largest size.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// Whether the server may push.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// Streams the peer may have open at once.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// A new stream's send window.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// The largest frame payload the sender accepts.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// The largest header list (decoded, 32 bytes a field more) the sender accepts.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: i64 = 0x7fff_ffff;

/// Error codes (RFC 9113 §7).
pub mod reason {
    /// Graceful.
    pub const NO_ERROR: u32 = 0x0;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// The peer broke flow control.
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    /// A frame on a stream already closed.
    pub const STREAM_CLOSED: u32 = 0x5;
    /// A frame of the wrong size.
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    /// The stream was not processed: safe to retry.
    pub const REFUSED_STREAM: u32 = 0x7;
    /// The stream is no longer wanted.
    pub const CANCEL: u32 = 0x8;
    /// A header block that cannot be decoded.
    pub const COMPRESSION_ERROR: u32 = 0x9;
    /// The peer asks too much (a flood).
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    /// The transport's security is not enough.
    pub const INADEQUATE_SECURITY: u32 = 0xc;

    /// The code's name, for messages.
    pub fn name(code: u32) -> &'static str {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES
            .get(code as usize)
            .copied()
            .unwrap_or("unknown error code")
    }
}

/// A frame's header: its payload's length, type, flags and stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The payload's length.
    pub len: usize,
    /// The frame's type ([`kind`]).
    pub kind: u8,
    /// Its flags ([`flag`]).
    pub flags: u8,
    /// Its stream (0: the connection), the reserved bit cleared.
    pub stream: u32,
}

impl Head {
    /// The header at the start of `buf`, if it holds one.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b: &[u8; HEAD_LEN] = buf.get(..HEAD_LEN)?.try_into().ok()?;
        Some(Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize,
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// Appends the header to `out`.
    pub fn put(self, out: &mut BytesMut) {
        let len = (self.len as u32).to_be_bytes();
        out.put_slice(&len[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream);
    }
}

/// Appends a SETTINGS frame with `values`.
pub fn put_settings(out: &mut BytesMut, values: &[(u16, u32)]) {
    head(kind::SETTINGS, 0, 0, values.len() * 6).put(out);
    for &(id, value) in values {
        out.put_u16(id);
        out.put_u32(value);
    }
}

/// Appends the acknowledgement of the server's SETTINGS.
pub fn put_settings_ack(out: &mut BytesMut) {
    head(kind::SETTINGS, flag::ACK, 0, 0).put(out);
}

/// Appends a WINDOW_UPDATE for `stream` (0: the connection).
pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    head(kind::WINDOW_UPDATE, 0, stream, 4).put(out);
    out.put_u32(increment & 0x7fff_ffff);
}

/// Appends a PING (or its acknowledgement) carrying `payload`.
pub fn put_ping(out: &mut BytesMut, ack: bool, payload: [u8; 8]) {
    head(kind::PING, if ack { flag::ACK } else { 0 }, 0, 8).put(out);
    out.put_slice(&payload);
}

/// Appends a RST_STREAM of `stream` with `code`.
pub fn put_reset(out: &mut BytesMut, stream: u32, code: u32) {
    head(kind::RST_STREAM, 0, stream, 4).put(out);
    out.put_u32(code);
}

/// Appends a GOAWAY telling the server the last stream processed and why (an error code).
pub fn put_goaway(out: &mut BytesMut, last: u32, code: u32) {
    head(kind::GOAWAY, 0, 0, 8).put(out);
    out.put_u32(last & 0x7fff_ffff);
    out.put_u32(code);
}

/// Appends HEADERS (and CONTINUATION frames if the block is larger than `max_frame`) opening
/// `stream` with the header `block`.
pub fn put_headers(out: &mut BytesMut, stream: u32, block: &[u8], max_frame: usize) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let mut kind = kind::HEADERS;
    // An empty block still needs its one HEADERS frame.
    if block.is_empty() {
        head(kind, flag::END_HEADERS, stream, 0).put(out);
        return;
    }
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        head(kind, flags, stream, chunk.len()).put(out);
        out.put_slice(chunk);
        kind = kind::CONTINUATION;
    }
}

/// Appends DATA frames of at most `max_frame` bytes carrying `data`, the last one ending the
/// stream if `end`.
pub fn put_data(out: &mut BytesMut, stream: u32, data: &[u8], max_frame: usize, end: bool) {
    if data.is_empty() {
        head(
            kind::DATA,
            if end { flag::END_STREAM } else { 0 },
            stream,
            0,
        )
        .put(out);
        return;
    }
    let mut chunks = data.chunks(max_frame.max(1)).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last && end { flag::END_STREAM } else { 0 };
        head(kind::DATA, flags, stream, chunk.len()).put(out);
        out.put_slice(chunk);
    }
}

fn head(kind: u8, flags: u8, stream: u32, len: usize) -> Head {
    Head {
        len,
        kind,
        flags,
        stream,
    }
}

/// Static-table indices (RFC 7541 Appendix A) of the fields a request names.
const AUTHORITY: usize = 1;
const METHOD_POST: u8 = 3;
const PATH: usize = 4;
const SCHEME_HTTP: u8 = 6;
const SCHEME_HTTPS: u8 = 7;

/// A request's header block: `POST`, the scheme, `authority` and `path`, then every header
/// in `headers` (content type, `te`, user agent, metadata, `grpc-timeout`).
pub fn request_block(https: bool, authority: &str, path: &str, headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    // Indexed fields: the high bit and the static index.
    out.put_u8(0x80 | METHOD_POST);
    out.put_u8(0x80 | if https { SCHEME_HTTPS } else { SCHEME_HTTP });
    literal_indexed_name(&mut out, PATH, path.as_bytes());
    literal_indexed_name(&mut out, AUTHORITY, authority.as_bytes());
    for (name, value) in headers {
        literal_new_name(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.freeze()
}

/// "Literal Header Field without Indexing", the name from the static table (§6.2.2).
fn literal_indexed_name(out: &mut BytesMut, index: usize, value: &[u8]) {
    integer(out, 4, 0x00, index);
    string(out, value);
}

/// "Literal Header Field without Indexing", a new name (§6.2.2).
fn literal_new_name(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0x00);
    string(out, name);
    string(out, value);
}

/// A string literal, not Huffman coded (§5.2).
fn string(out: &mut BytesMut, bytes: &[u8]) {
    integer(out, 7, 0x00, bytes.len());
    out.put_slice(bytes);
}

/// An integer with an N-bit prefix (§5.1), `high` holding the bits above the prefix.
fn integer(out: &mut BytesMut, prefix_bits: u32, high: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.put_u8(high | value as u8);
        return;
    }
    out.put_u8(high | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_round_trip() {
        let mut out = BytesMut::new();
        let written = head(kind::HEADERS, flag::END_HEADERS, 0x7fff_fffd, 70_000);
        written.put(&mut out);
        assert_eq!(out.len(), HEAD_LEN);
        assert_eq!(Head::parse(&out), Some(written));
        assert_eq!(Head::parse(&out[..8]), None);
        // The reserved bit of the stream id is ignored.
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out).map(|h| h.stream), Some(0x7fff_fffd));
    }

    #[test]
    fn request_blocks_decode_to_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/grpc".parse().expect("value"));
        headers.insert("te", "trailers".parse().expect("value"));
        let long = "x".repeat(300);
        headers.insert("authorization", long.parse().expect("value"));
        headers.insert("grpc-timeout", "5000000u".parse().expect("value"));
        let block = request_block(
            true,
            "example.com:443",
            "/vecrig.v1.VectorIndex/Search",
            &headers,
        );
        let decoded = loona_hpack::Decoder::new()
            .decode(&block)
            .expect("a valid block");
        let text: Vec<(String, String)> = decoded
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n).expect("utf-8"),
                    String::from_utf8(v).expect("utf-8"),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/vecrig.v1.VectorIndex/Search"),
            (":authority", "example.com:443"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", long.as_str()),
            ("grpc-timeout", "5000000u"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn large_blocks_and_bodies_are_split_into_frames() {
        let mut out = BytesMut::new();
        put_headers(&mut out, 3, &[7; 40], 16);
        let first = Head::parse(&out).expect("head");
        assert_eq!((first.kind, first.flags, first.len), (kind::HEADERS, 0, 16));
        let second = Head::parse(&out[HEAD_LEN + 16..]).expect("head");
        assert_eq!((second.kind, second.flags), (kind::CONTINUATION, 0));
        let third = Head::parse(&out[2 * (HEAD_LEN + 16)..]).expect("head");
        assert_eq!(
            (third.kind, third.flags, third.len),
            (kind::CONTINUATION, flag::END_HEADERS, 8)
        );

        let mut out = BytesMut::new();
        put_data(&mut out, 5, &[1; 20], 16, true);
        let first = Head::parse(&out).expect("head");
        let second = Head::parse(&out[HEAD_LEN + 16..]).expect("head");
        assert_eq!((first.flags, first.len), (0, 16));
        assert_eq!((second.flags, second.len), (flag::END_STREAM, 4));
        assert_eq!(out.len(), 2 * HEAD_LEN + 20);

        let mut out = BytesMut::new();
        put_data(&mut out, 5, &[], 16, true);
        assert_eq!(Head::parse(&out).map(|h| (h.len, h.flags)), Some((0, 1)));
    }
}
