//! A connection's first request, looked at before the connection is given to a lane: which
//! bearer token it carries, so that tenants behind one address can be seated in lanes of
//! their own ([`super::lanes`]).
//!
//! Why here: a tenant is named by the token of each request, not by anything the socket
//! shows, and once a connection is served on a lane it cannot move. So, where the token file
//! names tenants, the accept side peeks at the socket (`MSG_PEEK`: nothing is consumed, and
//! hyper later reads the same bytes) until the first HEADERS frame is in, or for at most
//! [`FIRST_REQUEST_WAIT`], and finds its `authorization` field in the HPACK block.
//!
//! gRPC's C-core, Java and Go clients send no request before the server's SETTINGS frame, so
//! once the client's preface and SETTINGS are in, an empty SETTINGS frame is sent to it
//! first. The client acknowledges it; hyper, which sends its own SETTINGS later, must not
//! see an acknowledgement it did not ask for (h2 calls that a protocol error), so the
//! client's first SETTINGS ACK is taken off the stream here: the bytes before it are
//! consumed and handed on to be read again ([`FirstRequest::replay`]). A client that does
//! not acknowledge within [`ACK_WAIT`] is closed, as RFC 9113 allows (SETTINGS_TIMEOUT).
//!
//! What it finds is a key, not a tenant: a hash of the field's encoded bytes. The first
//! header block of a connection is encoded with an empty dynamic table, so one client's
//! connections that carry one token encode it alike, and the key tells them apart from
//! another token's without decoding Huffman strings or checking the token (authentication
//! still does that, per request). A connection whose first request does not come in time,
//! comes over TLS, or carries no token has no key: it is seated by its address alone.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a connection waits to be given a lane while its first request comes in. A
/// client is seated as soon as its first HEADERS (and its acknowledgement of the server's
/// SETTINGS) are in; one that connects ahead of its calls is seated by address after this.
pub const FIRST_REQUEST_WAIT: Duration = Duration::from_millis(20);

/// The longest a client may take to acknowledge the server's SETTINGS.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// The most bytes looked at: enough for a client's preface, its SETTINGS, a first flow-control
/// window of request bodies and their headers, sent before its acknowledgement.
const MAX_PEEK: usize = 128 * 1024;

/// The bytes looked at first: a preface, SETTINGS and a first request's HEADERS.
const FIRST_PEEK: usize = 16 * 1024;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame (the server's connection preface): the defaults, until hyper
/// sends its own.
const SERVER_SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];

/// A frame header's length.
const FRAME_HEADER: usize = 9;

/// `authorization` in HPACK's static table.
const AUTHORIZATION_INDEX: u64 = 23;

/// What looking at a connection's first bytes came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FirstRequest {
    /// The key of the first request's bearer token, if it came in time and carried one.
    pub key: Option<u64>,
    /// Bytes taken off the socket (all it sent before its SETTINGS ACK), to be read first.
    pub replay: Vec<u8>,
}

/// The connection could not be handed on: the server's SETTINGS went out and the client did
/// not acknowledge them in time (or the socket failed).
#[derive(Debug)]
pub struct Unacknowledged;

/// Looks at `stream`'s first bytes: the token key of its first request, and the bytes to
/// replay if the server's SETTINGS were sent (see the module docs).
pub async fn look(stream: &mut TcpStream) -> Result<FirstRequest, Unacknowledged> {
    let started = tokio::time::Instant::now();
    let request_deadline = started + FIRST_REQUEST_WAIT;
    // Grown only as a client sends more before its acknowledgement: a flood of connections
    // that stop after their SETTINGS holds little memory while they wait.
    let mut buffer = vec![0; FIRST_PEEK];
    let mut settings_sent = false;
    loop {
        let deadline = if settings_sent {
            started + ACK_WAIT
        } else {
            request_deadline
        };
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await;
        let read = match peeked {
            Ok(Ok(read)) if read > 0 => read,
            // Closed, failed or silent: hand it on as it is, unless SETTINGS went out.
            _ if settings_sent => return Err(Unacknowledged),
            _ => return Ok(FirstRequest::default()),
        };
        let seen = scan(&buffer[..read]);
        let full = read == buffer.len();
        if full && buffer.len() < MAX_PEEK {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if seen.foreign {
            return if settings_sent {
                Err(Unacknowledged)
            } else {
                Ok(FirstRequest::default())
            };
        }
        if seen.client_settings && !settings_sent {
            stream
                .write_all(&SERVER_SETTINGS)
                .await
                .map_err(|_| Unacknowledged)?;
            settings_sent = true;
        }
        let now = tokio::time::Instant::now();
        let request_known = seen.key.is_some() || now >= request_deadline;
        match (settings_sent, seen.ack_at) {
            (true, Some(at)) if request_known => {
                // Everything up to the ACK is in the socket (peeked): take it, without the ACK.
                let mut replay = vec![0; at + FRAME_HEADER];
                stream
                    .read_exact(&mut replay)
                    .await
                    .map_err(|_| Unacknowledged)?;
                replay.truncate(at);
                return Ok(FirstRequest {
                    key: seen.key.flatten(),
                    replay,
                });
            }
            (false, _) if now >= request_deadline || full => {
                return Ok(FirstRequest::default());
            }
            (true, None) if full => return Err(Unacknowledged),
            _ => {}
        }
        // A peek returns at once while any byte waits: wait for more.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What the bytes so far show.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// The preface and the client's first SETTINGS frame are in.
    client_settings: bool,
    /// Where the client's first SETTINGS acknowledgement starts, once it is in.
    ack_at: Option<usize>,
    /// The first request's token key (`Some(None)`: no token), once its HEADERS are in.
    key: Option<Option<u64>>,
    /// Not HTTP/2 in the clear (TLS, garbage), or a first frame that is not SETTINGS.
    foreign: bool,
}

fn scan(bytes: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let prefix = bytes.len().min(PREFACE.len());
    if bytes[..prefix] != PREFACE[..prefix] {
        seen.foreign = true;
        return seen;
    }
    if prefix < PREFACE.len() {
        return seen;
    }
    let mut at = prefix;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let Some(payload) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + length) else {
            break;
        };
        let first = at == PREFACE.len();
        match kind {
            0x4 if first && flags & 0x1 == 0 => seen.client_settings = true,
            _ if first => {
                seen.foreign = true;
                return seen;
            }
            0x4 if flags & 0x1 != 0 && length == 0 && seen.ack_at.is_none() => {
                seen.ack_at = Some(at)
            }
            0x1 if seen.key.is_none() => {
                seen.key = Some(headers_payload(payload, flags).and_then(authorization_key));
            }
            _ => {}
        }
        at += FRAME_HEADER + length;
    }
    seen
}

/// The header block fragment of a HEADERS frame's payload (padding and priority removed).
fn headers_payload(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let (mut start, mut end) = (0, payload.len());
    if flags & 0x8 != 0 {
        let pad = usize::from(*payload.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & 0x20 != 0 {
        start += 5;
    }
    payload.get(start..end)
}

/// The key of the `authorization` field's encoded value in an HPACK block, if it has one.
fn authorization_key(mut block: &[u8]) -> Option<u64> {
    while let Some(&first) = block.first() {
        if first & 0x80 != 0 {
            // Indexed field: nothing literal (the dynamic table is empty on a first request).
            (_, block) = integer(block, 7)?;
            continue;
        }
        if first & 0xE0 == 0x20 {
            // Dynamic table size update.
            (_, block) = integer(block, 5)?;
            continue;
        }
        let prefix = if first & 0xC0 == 0x40 { 6 } else { 4 };
        let (index, after) = integer(block, prefix)?;
        block = after;
        let is_authorization = if index == 0 {
            let (huffman, name, after) = string(block)?;
            block = after;
            !huffman && name.eq_ignore_ascii_case(b"authorization")
        } else {
            index == AUTHORIZATION_INDEX
        };
        let (huffman, value, after) = string(block)?;
        block = after;
        if is_authorization {
            let mut hasher = DefaultHasher::new();
            (huffman, value).hash(&mut hasher);
            return Some(hasher.finish());
        }
    }
    None
}

/// An HPACK integer with a `prefix`-bit prefix, and the bytes after it.
fn integer(block: &[u8], prefix: u32) -> Option<(u64, &[u8])> {
    let max = (1u64 << prefix) - 1;
    let mut value = u64::from(*block.first()?) & max;
    let mut rest = &block[1..];
    if value < max {
        return Some((value, rest));
    }
    let mut shift = 0;
    loop {
        let (&byte, after) = rest.split_first()?;
        rest = after;
        value = value.checked_add((u64::from(byte) & 0x7F).checked_shl(shift)?)?;
        shift += 7;
        if byte & 0x80 == 0 || shift > 28 {
            return (byte & 0x80 == 0).then_some((value, rest));
        }
    }
}

/// An HPACK string: whether it is Huffman-coded, its bytes, and the bytes after it.
fn string(block: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let huffman = *block.first()? & 0x80 != 0;
    let (length, rest) = integer(block, 7)?;
    let length = usize::try_from(length).ok()?;
    Some((huffman, rest.get(..length)?, rest.get(length..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A literal field without indexing: static name `index`, or a literal `name`.
    fn literal(index: u8, name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![index.min(15)];
        if index == 0 {
            out.push(name.len() as u8);
            out.extend_from_slice(name);
        }
        out.push(value.len() as u8);
        out.extend_from_slice(value);
        out
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut out = vec![
            (length >> 16) as u8,
            (length >> 8) as u8,
            length as u8,
            kind,
            flags,
        ];
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Preface, an empty SETTINGS, then a HEADERS frame holding `block`.
    fn connection(block: &[u8]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, &[]));
        out.extend(frame(0x1, 0x4, block));
        out
    }

    /// `:method POST` (indexed 3), `:path` (literal, indexed name 4), then `fields`.
    fn block(fields: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0x83];
        out.extend(literal(4, b"", b"/vecrig.v1.VectorIndex/Search"));
        for field in fields {
            out.extend_from_slice(field);
        }
        out
    }

    /// The key `scan` finds in `bytes` (`None`: no HEADERS yet).
    fn key(bytes: &[u8]) -> Option<Option<u64>> {
        scan(bytes).key
    }

    #[test]
    fn tokens_are_told_apart_and_one_token_keys_alike() {
        // `authorization` is static entry 23: past the 4-bit prefix, so 0x0F then 23 - 15.
        let with_index = |token: &[u8]| {
            let mut field = vec![0x1F, 23 - 15];
            field.push(token.len() as u8);
            field.extend_from_slice(token);
            connection(&block(&[field]))
        };
        let alpha = key(&with_index(b"Bearer alpha"));
        let beta = key(&with_index(b"Bearer beta"));
        assert!(matches!(alpha, Some(Some(_))), "{alpha:?}");
        assert_ne!(alpha, beta);
        assert_eq!(alpha, key(&with_index(b"Bearer alpha")));
        // A literal name counts too.
        let named = connection(&block(&[literal(0, b"authorization", b"Bearer alpha")]));
        assert!(matches!(key(&named), Some(Some(_))));
    }

    #[test]
    fn no_token_no_key_and_partial_bytes_wait() {
        let plain = connection(&block(&[literal(0, b"x-other", b"1")]));
        assert_eq!(key(&plain), Some(None));
        for cut in [3, 24, 30, plain.len() - 1] {
            let seen = scan(&plain[..cut]);
            assert_eq!((seen.key, seen.foreign), (None, false), "{cut}");
        }
        assert!(!scan(&plain[..30]).client_settings);
        assert!(scan(&plain[..24 + 9]).client_settings);
        // TLS, or anything that is not HTTP/2 in the clear: foreign, at once.
        assert!(scan(&[0x16, 0x03, 0x01]).foreign);
        // A first frame that is not SETTINGS.
        let mut headers_first = PREFACE.to_vec();
        headers_first.extend(frame(0x1, 0x4, &block(&[])));
        assert!(scan(&headers_first).foreign);
        // A HEADERS frame of garbage: a request without a key.
        assert_eq!(key(&connection(&[0x0F, 0xFF])), Some(None));
    }

    #[test]
    fn the_first_settings_ack_is_found_wherever_it_comes() {
        let request = connection(&block(&[literal(0, b"authorization", b"Bearer alpha")]));
        assert_eq!(scan(&request).ack_at, None);
        // After the request (a client that sends at once), and a second one is not it.
        let mut late = request.clone();
        late.extend(frame(0x4, 0x1, &[]));
        late.extend(frame(0x4, 0x1, &[]));
        assert_eq!(scan(&late).ack_at, Some(request.len()));
        // Before it (a client that waits for the server's SETTINGS).
        let settings_end = PREFACE.len() + FRAME_HEADER;
        let mut early = request[..settings_end].to_vec();
        early.extend(frame(0x4, 0x1, &[]));
        early.extend_from_slice(&request[settings_end..]);
        let seen = scan(&early);
        assert_eq!(seen.ack_at, Some(settings_end));
        assert_eq!(seen.key, key(&request));
    }

    #[test]
    fn padding_and_priority_are_skipped() {
        let field = literal(0, b"authorization", b"Bearer alpha");
        let bare = key(&connection(&block(std::slice::from_ref(&field))));
        let mut payload = vec![2]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend(block(&[field]));
        payload.extend_from_slice(&[0, 0]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[]));
        bytes.extend(frame(0x1, 0x4 | 0x8 | 0x20, &payload));
        assert_eq!(key(&bytes), bare);
    }

    /// A client that waits for the server's SETTINGS, as gRPC's C-core, Java and Go do: it
    /// gets them, and hyper is handed its preface and SETTINGS without the acknowledgement.
    #[tokio::test]
    async fn a_client_that_waits_for_settings_gets_them_and_its_ack_is_taken_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let request = connection(&block(&[literal(0, b"authorization", b"Bearer alpha")]));
        let settings_end = PREFACE.len() + FRAME_HEADER;
        let (preface, headers) = (
            request[..settings_end].to_vec(),
            request[settings_end..].to_vec(),
        );
        let client = tokio::spawn(async move {
            let mut socket = TcpStream::connect(address).await.expect("connect");
            // As gRPC clients do: without it the request waits behind the ACK's segment.
            socket.set_nodelay(true).expect("nodelay");
            socket.write_all(&preface).await.expect("preface");
            let mut settings = [0u8; FRAME_HEADER];
            socket
                .read_exact(&mut settings)
                .await
                .expect("server SETTINGS");
            assert_eq!(settings, SERVER_SETTINGS);
            socket.write_all(&frame(0x4, 0x1, &[])).await.expect("ack");
            socket.write_all(&headers).await.expect("request");
            socket
        });
        let (mut server, _) = listener.accept().await.expect("accept");
        let first = look(&mut server).await.expect("acknowledged");
        assert_eq!(first.key, key(&request).flatten());
        assert!(first.key.is_some());
        assert_eq!(first.replay, request[..settings_end]);
        // What follows the ACK is still in the socket, for hyper to read.
        let mut rest = vec![0u8; request.len() - settings_end];
        server.read_exact(&mut rest).await.expect("the request");
        assert_eq!(rest, request[settings_end..]);
        drop(client.await.expect("client"));
    }
}
