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
//! What it finds is a key, not a tenant: a hash of the field's encoded bytes. The first
//! header block of a connection is encoded with an empty dynamic table, so one client's
//! connections that carry one token encode it alike, and the key tells them apart from
//! another token's without decoding Huffman strings or checking the token (authentication
//! still does that, per request). A connection whose first request does not come in time,
//! comes over TLS, or carries no token has no key: it is seated by its address alone.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::net::TcpStream;

/// The longest a connection waits to be given a lane while its first request comes in. A
/// client sends its first HEADERS with the preface when it connects to make a call, and is
/// seated as soon as they are in; one that opens its connections ahead of its calls (a pool
/// opened one by one on a busy machine) may take tens of milliseconds, so the wait is long
/// enough for that. A connection with nothing to send is seated by address after it.
pub const FIRST_REQUEST_WAIT: Duration = Duration::from_millis(100);

/// The most bytes looked at: the preface, the client's SETTINGS and the first HEADERS frame.
const MAX_PEEK: usize = 16 * 1024;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `authorization` in HPACK's static table.
const AUTHORIZATION_INDEX: u64 = 23;

/// The key of the bearer token `stream`'s first request carries, if it comes within
/// [`FIRST_REQUEST_WAIT`].
pub async fn token_key(stream: &TcpStream) -> Option<u64> {
    let give_up = tokio::time::Instant::now() + FIRST_REQUEST_WAIT;
    let mut buffer = vec![0; MAX_PEEK];
    loop {
        let peeked = tokio::time::timeout_at(give_up, stream.peek(&mut buffer)).await;
        let read = match peeked {
            Ok(Ok(read)) if read > 0 => read,
            _ => return None,
        };
        match parse(&buffer[..read]) {
            Parsed::Key(key) => return key,
            Parsed::Incomplete if read < MAX_PEEK && tokio::time::Instant::now() < give_up => {
                // A peek returns at once while any byte waits: wait for more.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Parsed::Incomplete => return None,
        }
    }
}

/// What the bytes so far show.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// The first HEADERS frame is not in yet.
    Incomplete,
    /// The first request's token key, or none (no token, not HTTP/2 in the clear, garbage).
    Key(Option<u64>),
}

fn parse(bytes: &[u8]) -> Parsed {
    let prefix = bytes.len().min(PREFACE.len());
    if bytes[..prefix] != PREFACE[..prefix] {
        return Parsed::Key(None);
    }
    let mut rest = &bytes[prefix..];
    if prefix < PREFACE.len() {
        return Parsed::Incomplete;
    }
    loop {
        let Some(header) = rest.get(..9) else {
            return Parsed::Incomplete;
        };
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let Some(payload) = rest.get(9..9 + length) else {
            return Parsed::Incomplete;
        };
        if kind == 0x1 {
            return Parsed::Key(headers_payload(payload, flags).and_then(authorization_key));
        }
        rest = &rest[9 + length..];
    }
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

    #[test]
    fn tokens_are_told_apart_and_one_token_keys_alike() {
        // `authorization` is static entry 23: past the 4-bit prefix, so 0x0F then 23 - 15.
        let with_index = |token: &[u8]| {
            let mut field = vec![0x1F, 23 - 15];
            field.push(token.len() as u8);
            field.extend_from_slice(token);
            connection(&block(&[field]))
        };
        let alpha = parse(&with_index(b"Bearer alpha"));
        let beta = parse(&with_index(b"Bearer beta"));
        assert!(matches!(alpha, Parsed::Key(Some(_))), "{alpha:?}");
        assert_ne!(alpha, beta);
        assert_eq!(alpha, parse(&with_index(b"Bearer alpha")));
        // A literal name counts too.
        let named = connection(&block(&[literal(0, b"authorization", b"Bearer alpha")]));
        assert!(matches!(parse(&named), Parsed::Key(Some(_))));
    }

    #[test]
    fn no_token_no_key_and_partial_bytes_wait() {
        let plain = connection(&block(&[literal(0, b"x-other", b"1")]));
        assert_eq!(parse(&plain), Parsed::Key(None));
        for cut in [3, 24, 30, plain.len() - 1] {
            assert_eq!(parse(&plain[..cut]), Parsed::Incomplete, "{cut}");
        }
        // TLS, or anything that is not HTTP/2 in the clear: no key, at once.
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Parsed::Key(None));
        // A HEADERS frame of garbage.
        assert_eq!(parse(&connection(&[0x0F, 0xFF])), Parsed::Key(None));
    }

    #[test]
    fn padding_and_priority_are_skipped() {
        let field = literal(0, b"authorization", b"Bearer alpha");
        let bare = parse(&connection(&block(std::slice::from_ref(&field))));
        let mut payload = vec![2]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend(block(&[field]));
        payload.extend_from_slice(&[0, 0]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x1, 0x4 | 0x8 | 0x20, &payload));
        assert_eq!(parse(&bytes), bare);
    }
}
