//! The connection's decoding paths, fed a server's bytes with no socket
//! ([`answers_to`](super::answers_to)): each request gets exactly one answer, whatever the
//! bytes, and the code says what the server did.

use bytes::{BufMut, BytesMut};
use tonic::Code;

use super::super::frame::{self, Head, flag, kind, reason, setting};
use super::{MAX_HEADER_LIST, MAX_QUEUED_REPLIES, answers_to};

fn put(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let mut head = BytesMut::new();
    Head {
        len: payload.len(),
        kind,
        flags,
        stream,
    }
    .put(&mut head);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
}

/// A header block of literal fields without indexing (RFC 7541 §6.2.2), short strings.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        for text in [name, value] {
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

/// The server's SETTINGS with `values`.
fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, values);
    out.to_vec()
}

const MESSAGE: [u8; 8] = [0, 0, 0, 0, 3, 7, 8, 9];

/// A whole answer on `stream`: headers, one message, trailers with `status`.
fn answer(out: &mut Vec<u8>, stream: u32, status: &str) {
    let headers = block(&[(":status", "200"), ("content-type", "application/grpc")]);
    put(out, kind::HEADERS, flag::END_HEADERS, stream, &headers);
    put(out, kind::DATA, 0, stream, &MESSAGE);
    let trailers = block(&[("grpc-status", status)]);
    let end = flag::END_HEADERS | flag::END_STREAM;
    put(out, kind::HEADERS, end, stream, &trailers);
}

/// The codes of the answers to `input` with `streams` requests open, read whole.
fn codes(input: &[u8], streams: usize) -> Vec<Code> {
    answers_to(input, streams, usize::MAX)
        .into_iter()
        .map(|answer| answer.expect("every request is answered").0.code)
        .collect()
}

#[test]
fn a_whole_answer_is_read_however_the_reads_cut_it() {
    let mut input = settings(&[(setting::MAX_CONCURRENT_STREAMS, 10)]);
    answer(&mut input, 1, "0");
    answer(&mut input, 3, "5");
    for cut in 1..=input.len() {
        let answers = answers_to(&input, 2, cut);
        let (first, kept) = answers[0].clone().expect("answered");
        assert_eq!(first.code, Code::Ok, "cut {cut}: {first:?}");
        assert_eq!(kept.as_deref(), Some(&MESSAGE[..]), "cut {cut}");
        let (second, kept) = answers[1].clone().expect("answered");
        assert_eq!(second.code, Code::NotFound, "cut {cut}");
        assert_eq!(kept, None, "only every other request keeps its answer");
    }
}

#[test]
fn trailers_only_answers_carry_status_message_and_pushback() {
    let mut input = settings(&[]);
    let fields = [
        (":status", "200"),
        ("grpc-status", "8"),
        ("grpc-message", "queue%20full"),
        ("grpc-retry-pushback-ms", "20"),
    ];
    let end = flag::END_HEADERS | flag::END_STREAM;
    put(&mut input, kind::HEADERS, end, 1, &block(&fields));
    let answers = answers_to(&input, 1, usize::MAX);
    let (answer, _) = answers[0].clone().expect("answered");
    assert_eq!(answer.code, Code::ResourceExhausted);
    assert_eq!(answer.message, "queue full");
    assert_ne!(answer.pushback, crate::wire::grpc::Pushback::None);
}

#[test]
fn continuation_padding_and_priority_are_read_through() {
    let mut input = settings(&[]);
    let headers = block(&[(":status", "200"), ("content-type", "application/grpc")]);
    // HEADERS with priority fields and padding, holding half the block; CONTINUATION the rest.
    let (one, two) = headers.split_at(headers.len() / 2);
    let mut payload = vec![3]; // pad length
    payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority: dependency and weight
    payload.extend_from_slice(one);
    payload.extend_from_slice(&[0; 3]);
    put(
        &mut input,
        kind::HEADERS,
        flag::PADDED | flag::PRIORITY,
        1,
        &payload,
    );
    put(&mut input, kind::CONTINUATION, flag::END_HEADERS, 1, two);
    let mut data = vec![2];
    data.extend_from_slice(&MESSAGE);
    data.extend_from_slice(&[0; 2]);
    put(&mut input, kind::DATA, flag::PADDED, 1, &data);
    // PRIORITY and unknown frame types are ignored.
    put(&mut input, 0x2, 0, 1, &[0, 0, 0, 0, 16]);
    put(&mut input, 0xfa, 0, 0, b"whatever");
    let end = flag::END_HEADERS | flag::END_STREAM;
    put(
        &mut input,
        kind::HEADERS,
        end,
        1,
        &block(&[("grpc-status", "0")]),
    );
    assert_eq!(codes(&input, 1), [Code::Ok]);
}

#[test]
fn resets_and_goaway_end_their_streams_and_spare_the_rest() {
    let mut input = settings(&[]);
    put(
        &mut input,
        kind::RST_STREAM,
        0,
        1,
        &reason::REFUSED_STREAM.to_be_bytes(),
    );
    let mut goaway = 3u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&reason::NO_ERROR.to_be_bytes());
    put(&mut input, kind::GOAWAY, 0, 0, &goaway);
    answer(&mut input, 3, "0");
    // Frames for a stream already ended (its call took its answer or gave up) are dropped.
    put(
        &mut input,
        kind::RST_STREAM,
        0,
        1,
        &reason::CANCEL.to_be_bytes(),
    );
    assert_eq!(
        codes(&input, 3),
        [Code::Unavailable, Code::Ok, Code::Unavailable],
        "1 refused, 3 answered, 5 never taken"
    );
}

#[test]
fn input_that_ends_with_requests_open_leaves_them_unavailable() {
    let mut input = settings(&[]);
    answer(&mut input, 1, "0");
    input.extend_from_slice(&[0, 0, 9, kind::DATA, 0, 0, 0, 0, 3, 1]);
    assert_eq!(codes(&input, 2), [Code::Ok, Code::Unavailable]);
    let answers = answers_to(&input, 2, 7);
    let (open, _) = answers[1].clone().expect("answered");
    assert!(open.message.contains("inside a frame"), "{open:?}");
}

/// Inputs that break the protocol for the whole connection: every request on it ends
/// INTERNAL, the ones already answered keep their answer.
#[test]
fn connection_errors_end_every_open_request_internal() {
    // A dynamic table size update, and nothing after it (RFC 7541 §4.2 wants it first).
    let size_update_alone = vec![0x3f, 0xe1, 0x1f];
    let long_block = vec![0u8; frame::DEFAULT_MAX_FRAME];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("DATA for a stream never opened", {
            let mut v = Vec::new();
            put(&mut v, kind::DATA, 0, 101, &MESSAGE);
            v
        }),
        ("HEADERS for a stream of the server's own", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 2, &block(&[]));
            v
        }),
        (
            "a frame over 16 KiB",
            vec![0x00, 0x40, 0x01, kind::DATA, 0, 0, 0, 0, 1],
        ),
        ("PING of 7 bytes", {
            let mut v = Vec::new();
            put(&mut v, kind::PING, 0, 0, &[0; 7]);
            v
        }),
        ("push enabled", settings(&[(setting::ENABLE_PUSH, 1)])),
        (
            "frame size out of range",
            settings(&[(setting::MAX_FRAME_SIZE, 100)]),
        ),
        (
            "window over 2^31-1",
            settings(&[(setting::INITIAL_WINDOW_SIZE, u32::MAX)]),
        ),
        ("WINDOW_UPDATE of 0", {
            let mut v = Vec::new();
            put(&mut v, kind::WINDOW_UPDATE, 0, 0, &[0; 4]);
            v
        }),
        ("PUSH_PROMISE", {
            let mut v = Vec::new();
            put(
                &mut v,
                kind::PUSH_PROMISE,
                flag::END_HEADERS,
                1,
                &[0, 0, 0, 2],
            );
            v
        }),
        ("CONTINUATION without HEADERS", {
            let mut v = Vec::new();
            put(&mut v, kind::CONTINUATION, flag::END_HEADERS, 1, &[]);
            v
        }),
        ("a header block interrupted", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, 0, 1, &block(&[(":status", "200")]));
            put(&mut v, kind::DATA, 0, 1, &MESSAGE);
            v
        }),
        ("a header block that never ends", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, 0, 1, &long_block);
            for _ in 0..MAX_HEADER_LIST / long_block.len() {
                put(&mut v, kind::CONTINUATION, 0, 1, &long_block);
            }
            v
        }),
        ("HPACK that does not decode", {
            let mut v = Vec::new();
            put(
                &mut v,
                kind::HEADERS,
                flag::END_HEADERS,
                1,
                &size_update_alone,
            );
            v
        }),
        ("bad padding", {
            let mut v = Vec::new();
            put(&mut v, kind::DATA, flag::PADDED, 1, &[9, 1]);
            v
        }),
        ("a PING flood whose answers are not read", {
            let mut v = Vec::new();
            for _ in 0..MAX_QUEUED_REPLIES / 17 + 2 {
                put(&mut v, kind::PING, 0, 0, &[1; 8]);
            }
            v
        }),
    ];
    for (what, bad) in cases {
        let mut input = settings(&[]);
        answer(&mut input, 1, "0");
        input.extend_from_slice(&bad);
        let answers = answers_to(&input, 3, usize::MAX);
        let codes: Vec<Code> = answers
            .iter()
            .map(|a| a.as_ref().expect("answered").0.code)
            .collect();
        assert_eq!(codes, [Code::Ok, Code::Internal, Code::Internal], "{what}");
        let message = &answers[1].as_ref().expect("answered").0.message;
        assert!(message.contains("protocol violation"), "{what}: {message}");
    }
}

/// Inputs that break one stream: that request ends INTERNAL, the connection serves the rest.
#[test]
fn stream_errors_end_only_their_request_internal() {
    let headers = block(&[(":status", "200")]);
    let trailers = block(&[("grpc-status", "0")]);
    let end = flag::END_HEADERS | flag::END_STREAM;
    // A 4000-byte field put in the dynamic table once, then named 20 times by its index:
    // 80 KB decoded from a block of some 4 KB.
    let bomb = {
        let mut v = vec![0x40, 1, b'x', 0x7f];
        let mut len = BytesMut::new();
        let mut rest = 4000 - 127;
        while rest >= 128 {
            len.put_u8((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        len.put_u8(rest as u8);
        v.extend_from_slice(&len);
        v.extend_from_slice(&[b'y'; 4000]);
        v.extend_from_slice(&[0x80 | 62; 20]);
        v.extend_from_slice(&block(&[(":status", "200")]));
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a response without :status", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &block(&[]));
            v
        }),
        ("DATA before the headers", {
            let mut v = Vec::new();
            put(&mut v, kind::DATA, 0, 1, &MESSAGE);
            v
        }),
        ("trailers that do not end the stream", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &headers);
            put(&mut v, kind::DATA, 0, 1, &MESSAGE);
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &trailers);
            v
        }),
        ("two messages", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &headers);
            put(&mut v, kind::DATA, 0, 1, &MESSAGE);
            put(&mut v, kind::DATA, 0, 1, &MESSAGE);
            put(&mut v, kind::HEADERS, end, 1, &trailers);
            v
        }),
        ("a compressed message", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &headers);
            put(&mut v, kind::DATA, 0, 1, &[1, 0, 0, 0, 1, 0]);
            v
        }),
        ("a body shorter than its prefix", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &headers);
            put(&mut v, kind::DATA, 0, 1, &MESSAGE[..6]);
            put(&mut v, kind::HEADERS, end, 1, &trailers);
            v
        }),
        ("no trailers", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &headers);
            put(&mut v, kind::DATA, flag::END_STREAM, 1, &MESSAGE);
            v
        }),
        ("grpc-status not a number", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &headers);
            put(&mut v, kind::DATA, 0, 1, &MESSAGE);
            put(
                &mut v,
                kind::HEADERS,
                end,
                1,
                &block(&[("grpc-status", "0k")]),
            );
            v
        }),
        ("a header list of 80 KB", {
            let mut v = Vec::new();
            put(&mut v, kind::HEADERS, flag::END_HEADERS, 1, &bomb[..]);
            v
        }),
        ("WINDOW_UPDATE of 0 on the stream", {
            let mut v = Vec::new();
            put(&mut v, kind::WINDOW_UPDATE, 0, 1, &[0; 4]);
            v
        }),
    ];
    for (what, bad) in cases {
        assert!(bad.len() < frame::DEFAULT_MAX_FRAME + 100, "{what}");
        let mut input = settings(&[]);
        input.extend_from_slice(&bad);
        answer(&mut input, 3, "0");
        assert_eq!(codes(&input, 2), [Code::Internal, Code::Ok], "{what}");
    }
}
