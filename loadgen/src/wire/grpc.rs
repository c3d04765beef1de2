//! gRPC over HTTP/2 as the hot path speaks it: the request headers, and the answer read back
//! from the response as tonic reads it. The request's frame itself is made once, by the
//! template it is rendered from ([`crate::dynamic::Template::frame`]).
//!
//! The status of a call is `grpc-status` from the trailers, or from the headers of a
//! trailers-only response; `grpc-message` is percent-decoded; `grpc-retry-pushback-ms` is the
//! server's retry advice. An HTTP status other than 200 without a `grpc-status` maps as
//! gRPC's HTTP-to-status table says. A stream reset maps by its reason as gRPC's HTTP/2
//! error table says; a connection that is lost or goes away (GOAWAY, reset, refused) is
//! `UNAVAILABLE`: the server may not even have seen the request, and the request may be
//! retried, which is what UNAVAILABLE tells a client.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tonic::Code;

use super::frame::reason;

/// The RPCs the hot path sends: vecrig's, or a templated target's search and write methods
/// in their place ([`Target::with_methods`](super::Target::with_methods)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `vecrig.v1.VectorIndex/Search`.
    Search = 0,
    /// `vecrig.v1.VectorIndex/Upsert`.
    Upsert = 1,
}

impl Rpc {
    /// The HTTP/2 `:path` of the RPC.
    pub fn path(self) -> &'static str {
        match self {
            Rpc::Search => "/vecrig.v1.VectorIndex/Search",
            Rpc::Upsert => "/vecrig.v1.VectorIndex/Upsert",
        }
    }
}

/// A deadline as gRPC's `grpc-timeout` header: at most 8 digits, in the finest unit that
/// keeps it within them.
pub fn timeout_header(deadline: Duration) -> HeaderValue {
    let nanos = deadline.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let text = units
        .iter()
        .find(|(per, _)| nanos / per < 100_000_000)
        .map_or_else(
            || "99999999H".to_string(),
            |(per, unit)| format!("{}{unit}", nanos / per),
        );
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999H"))
}

/// The headers every request of a run carries: content type, `te: trailers` (gRPC's marker
/// that the client understands trailers), the user agent and `--header`s; `grpc-timeout` is
/// added per deadline.
pub fn request_headers(metadata: &vecrig::client::Metadata) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(5 + metadata.len());
    let content_type = HeaderValue::from_static("application/grpc");
    headers.insert(http::header::CONTENT_TYPE, content_type);
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    let agent = concat!("vecrig-loadgen/", env!("CARGO_PKG_VERSION"));
    headers.insert(http::header::USER_AGENT, HeaderValue::from_static(agent));
    for (key, value) in metadata.iter() {
        let name = HeaderName::from_bytes(key.as_str().as_bytes())
            .map_err(|e| format!("header {key}: {e}"))?;
        let value = HeaderValue::from_bytes(value.as_encoded_bytes())
            .map_err(|e| format!("header {key}: {e}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// How a call ended, as far as the load cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The gRPC code.
    pub code: Code,
    /// The percent-decoded `grpc-message`, if any.
    pub message: String,
    /// The server's retry advice.
    pub pushback: Pushback,
}

impl Answer {
    /// An answer with `code` and nothing else (a transport outcome).
    pub fn code(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            pushback: Pushback::None,
        }
    }

    /// A response without `grpc-status`, by its HTTP status (gRPC's mapping table; 0: the
    /// response had none).
    pub fn from_http(status: u16) -> Self {
        let code = match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            200 => Code::Internal,
            _ => Code::Unknown,
        };
        Self::code(code, format!("HTTP {status} without grpc-status"))
    }

    /// A stream reset by the server, by its HTTP/2 error code (gRPC's table).
    pub fn from_reset(code: u32) -> Self {
        let grpc = match code {
            reason::REFUSED_STREAM => Code::Unavailable,
            reason::CANCEL => Code::Cancelled,
            reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        };
        let message = format!("stream reset by the server: {}", reason::name(code));
        Self::code(grpc, message)
    }
}

/// The fields of a header block that make a call's status, gathered one by one as the block
/// is decoded: nothing is allocated unless there is a `grpc-message`.
#[derive(Debug, Default)]
pub struct Fields {
    /// `:status`.
    pub status: Option<u16>,
    code: Option<Code>,
    message: Option<String>,
    pushback: Option<Pushback>,
    /// Why `grpc-status` could not be read, which then stands for the message.
    malformed: Option<String>,
}

impl Fields {
    /// Notes one decoded field, if it is one of ours.
    pub fn take(&mut self, name: &[u8], value: &[u8]) {
        match name {
            b":status" => {
                self.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            b"grpc-status" => {
                let code = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<i32>().ok());
                // A number gRPC does not define is UNKNOWN, as tonic reads it; something that
                // is no number at all breaks the protocol.
                self.code = Some(code.map_or(Code::Internal, Code::from));
                self.malformed = code.is_none().then(|| {
                    format!(
                        "grpc-status is not a number: {:?}",
                        String::from_utf8_lossy(&value[..value.len().min(32)])
                    )
                });
            }
            b"grpc-message" => self.message = Some(percent_decode(value)),
            b"grpc-retry-pushback-ms" => self.pushback = Some(Pushback::from_header(Some(value))),
            _ => {}
        }
    }

    /// The call's status, if the block held `grpc-status`.
    pub fn into_answer(self) -> Option<Answer> {
        Some(Answer {
            code: self.code?,
            message: self.malformed.or(self.message).unwrap_or_default(),
            pushback: self.pushback.unwrap_or(Pushback::None),
        })
    }
}

/// The largest answer message accepted (its length prefix); a larger one ends its call
/// RESOURCE_EXHAUSTED, as gRPC says of a message over the receiver's limit, before any of it
/// is kept.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A response body read as gRPC messages (a flag byte, a 4-byte length, the message) as its
/// DATA arrives, without keeping it: how many whole messages it held, and whether it ended
/// inside one. Nothing is buffered but a message's 5-byte prefix.
#[derive(Debug, Default, Clone)]
pub struct Messages {
    /// The prefix of the message being read, and how much of it has arrived.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come (after its prefix).
    remaining: usize,
    /// Whole messages read.
    count: u32,
}

impl Messages {
    /// Reads the next part of the body; an error is the answer the call ends with.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Answer> {
        while !data.is_empty() {
            if self.prefix_len < self.prefix.len() {
                let take = (self.prefix.len() - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
                self.prefix_len += take;
                data = &data[take..];
                if self.prefix_len < self.prefix.len() {
                    break;
                }
                let [flag, a, b, c, d] = self.prefix;
                match flag {
                    0 => {}
                    // The request offered no compression (no grpc-accept-encoding), so
                    // whatever encoding the server names, it is not one the client took.
                    1 => {
                        return Err(Answer::code(
                            Code::Internal,
                            "a compressed message, and the request accepted no compression",
                        ));
                    }
                    _ => {
                        return Err(Answer::code(
                            Code::Internal,
                            format!("a message with flags {flag:#04x}"),
                        ));
                    }
                }
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > MAX_MESSAGE {
                    return Err(Answer::code(
                        Code::ResourceExhausted,
                        format!("a message of {len} bytes, over the {MAX_MESSAGE} accepted"),
                    ));
                }
                self.remaining = len;
            }
            let take = self.remaining.min(data.len());
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                self.prefix_len = 0;
                self.count += 1;
            }
        }
        Ok(())
    }

    /// Whole messages read so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The body has ended: an error if it ended inside a message (a length prefix that
    /// promised more than came, or bytes past a message that are no whole message).
    pub fn finish(&self) -> Result<(), Answer> {
        if self.prefix_len == 0 {
            return Ok(());
        }
        Err(Answer::code(
            Code::Internal,
            format!(
                "the body ended inside a message ({} of its bytes missing)",
                if self.prefix_len < self.prefix.len() {
                    "prefix".to_string()
                } else {
                    self.remaining.to_string()
                }
            ),
        ))
    }
}

/// The answer of a unary call whose trailers said `answer`, its body having been `body`:
/// an OK status stands only on exactly one whole message.
pub fn checked(answer: Answer, body: &Messages) -> Answer {
    if answer.code != Code::Ok {
        return answer;
    }
    if let Err(broken) = body.finish() {
        return broken;
    }
    match body.count() {
        1 => answer,
        0 => Answer::code(Code::Internal, "missing response message"),
        n => Answer::code(Code::Internal, format!("{n} messages in a unary answer")),
    }
}

/// `%XX` escapes decoded (gRPC percent-encodes `grpc-message`); invalid UTF-8 is replaced.
fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the server asked of a retry, from its `grpc-retry-pushback-ms` trailer (gRFC A6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// No pushback: the client's own backoff applies.
    None,
    /// Wait at least this long before retrying.
    After(Duration),
    /// Do not retry (a negative or unreadable value, as gRFC A6 says).
    DoNotRetry,
}

impl Pushback {
    /// Reads the pushback of a failed call.
    pub fn of(status: &tonic::Status) -> Self {
        let value = status.metadata().get("grpc-retry-pushback-ms");
        Self::from_header(value.map(|v| v.as_encoded_bytes()))
    }

    /// Reads a `grpc-retry-pushback-ms` value (`None`: there was none).
    pub fn from_header(value: Option<&[u8]>) -> Self {
        match value {
            None => Pushback::None,
            Some(value) => match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(ms) => Pushback::After(Duration::from_millis(ms)),
                None => Pushback::DoNotRetry,
            },
        }
    }

    /// The wait before the next retry: the server's pushback where it gave one (it knows its
    /// queue), otherwise `backoff`; `None` when the server said not to retry.
    pub fn wait(self, backoff: Duration) -> Option<Duration> {
        match self {
            Pushback::None => Some(backoff),
            Pushback::After(at_least) => Some(at_least.max(backoff)),
            Pushback::DoNotRetry => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_sets_a_floor_on_the_wait_or_forbids_the_retry() {
        let with = |value: &str| {
            let mut status = tonic::Status::resource_exhausted("shed");
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", value.parse().expect("ascii"));
            Pushback::of(&status)
        };
        let backoff = Duration::from_millis(20);
        assert_eq!(with("250").wait(backoff), Some(Duration::from_millis(250)));
        assert_eq!(with("5").wait(backoff), Some(backoff));
        assert_eq!(with("-1").wait(backoff), None);
        assert_eq!(with("soon").wait(backoff), None);
        let plain = Pushback::of(&tonic::Status::unavailable("down"));
        assert_eq!(plain.wait(backoff), Some(backoff));
    }

    #[test]
    fn timeouts_fit_in_eight_digits() {
        let t = |d: Duration| timeout_header(d).to_str().expect("ascii").to_string();
        assert_eq!(t(Duration::from_millis(50)), "50000000n");
        assert_eq!(t(Duration::from_secs(30)), "30000000u");
        assert_eq!(t(Duration::from_secs(3600)), "3600000m");
        assert_eq!(t(Duration::from_secs(86_400 * 400)), "34560000S");
        assert_eq!(t(Duration::from_secs(86_400 * 4000)), "5760000M");
    }

    /// The status that a header block of these fields gives, decoded one by one as the
    /// connection does.
    fn status_of(fields: &[(&str, &str)]) -> Option<Answer> {
        let mut status = Fields::default();
        for (name, value) in fields {
            status.take(name.as_bytes(), value.as_bytes());
        }
        status.into_answer()
    }

    #[test]
    fn status_from_trailers_with_message_and_pushback() {
        let mut trailers = vec![
            ("content-type", "application/grpc"),
            ("grpc-status", "8"),
            ("grpc-message", "queue%20full%3A%20100%25"),
            ("grpc-retry-pushback-ms", "250"),
        ];
        let answer = status_of(&trailers).expect("a status");
        assert_eq!(answer.code, Code::ResourceExhausted);
        assert_eq!(answer.message, "queue full: 100%");
        assert_eq!(answer.pushback, Pushback::After(Duration::from_millis(250)));
        trailers[3].1 = "-1";
        let answer = status_of(&trailers).expect("a status");
        assert_eq!(answer.pushback, Pushback::DoNotRetry);
        assert_eq!(status_of(&[(":status", "200")]), None);
        let answer = status_of(&[("grpc-status", "x"), ("grpc-message", "hidden")]);
        let answer = answer.expect("a status");
        assert_eq!(answer.code, Code::Internal);
        assert_eq!(answer.message, "grpc-status is not a number: \"x\"");
        let answer = status_of(&[("grpc-status", "99")]).expect("a status");
        assert_eq!(answer.code, Code::Unknown);
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%e2%9c%93 ok"), "\u{2713} ok");
    }

    /// The body's messages read in pieces of `cut` bytes.
    fn read(body: &[u8], cut: usize) -> Result<Messages, Answer> {
        let mut messages = Messages::default();
        for piece in body.chunks(cut.max(1)) {
            messages.feed(piece)?;
        }
        Ok(messages)
    }

    #[test]
    fn bodies_are_read_as_whole_messages_however_they_are_cut() {
        let ok = Answer::code(Code::Ok, "");
        let one = [0, 0, 0, 0, 3, 7, 8, 9];
        for cut in 1..=one.len() {
            let body = read(&one, cut).expect("one message");
            assert_eq!(body.count(), 1);
            assert_eq!(checked(ok.clone(), &body).code, Code::Ok);
        }
        let empty = read(&[0, 0, 0, 0, 0], 2).expect("an empty message");
        assert_eq!(checked(ok.clone(), &empty).code, Code::Ok);
        // A body longer than its prefix says: the rest is no whole message.
        let long = read(&[0, 0, 0, 0, 1, 7, 8, 9], 3).expect("no bad flag yet");
        assert_eq!(checked(ok.clone(), &long).code, Code::Internal);
        // Shorter than it says.
        let short = read(&[0, 0, 0, 0, 9, 1], 8).expect("so far so good");
        assert!(short.finish().is_err());
        assert_eq!(checked(ok.clone(), &short).code, Code::Internal);
        // Two messages, none, compressed, a bad flag, too large.
        let two = read(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 4).expect("two messages");
        assert_eq!(checked(ok.clone(), &two).code, Code::Internal);
        let none = Messages::default();
        assert_eq!(checked(ok.clone(), &none).code, Code::Internal);
        let status = Answer::code(Code::NotFound, "gone");
        assert_eq!(checked(status, &none).code, Code::NotFound);
        let code = |body: &[u8]| read(body, 64).map(|_| ()).map_err(|a| a.code);
        assert_eq!(code(&[1, 0, 0, 0, 1, 0]), Err(Code::Internal));
        assert_eq!(code(&[2, 0, 0, 0, 0]), Err(Code::Internal));
        assert_eq!(
            code(&[0, 0xff, 0xff, 0xff, 0xff]),
            Err(Code::ResourceExhausted)
        );
    }

    #[test]
    fn transport_failures_map_as_grpc_says() {
        let http = |s: u16| Answer::from_http(s).code;
        assert_eq!(http(503), Code::Unavailable);
        assert_eq!(http(401), Code::Unauthenticated);
        assert_eq!(http(404), Code::Unimplemented);
        assert_eq!(http(500), Code::Unknown);
        assert_eq!(http(0), Code::Unknown);
        let reset = |code: u32| Answer::from_reset(code).code;
        assert_eq!(reset(reason::REFUSED_STREAM), Code::Unavailable);
        assert_eq!(reset(reason::CANCEL), Code::Cancelled);
        assert_eq!(reset(reason::ENHANCE_YOUR_CALM), Code::ResourceExhausted);
        assert_eq!(reset(2), Code::Internal);
        assert_eq!(
            Answer::from_reset(7).message,
            "stream reset by the server: REFUSED_STREAM"
        );
    }
}
