//! Fuzzes everything the loadgen's HTTP/2 client decodes from the network: frames, HPACK
//! (with the server's dynamic table), padding and priority, flow-control and settings frames,
//! gRPC's message framing, trailers and the status read from them, and the search answer's
//! protobuf where the ids are read. The connection is fed the bytes with no socket
//! (`vecrig_loadgen::wire::answers_to`), read in pieces, so frames are cut across reads.
//!
//! Input: byte 0 picks the requests open (1-8), byte 1 the read size (0: all at once); the
//! rest is what the server sent after the client's preface.
//!
//! Checks: no panic; every request has exactly one answer; a kept answer is at most one
//! message of at most `MAX_MESSAGE` bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tonic::Code;
use vecrig_loadgen::dynamic::Templates;
use vecrig_loadgen::wire::answers_to;
use vecrig_loadgen::wire::grpc::MAX_MESSAGE;

fuzz_target!(|data: &[u8]| {
    let [streams, cut, input @ ..] = data else {
        return;
    };
    let streams = usize::from(streams % 8) + 1;
    let cut = match cut {
        0 => usize::MAX,
        n => usize::from(*n),
    };
    let templates = Templates::vecrig_v1();
    for (i, answer) in answers_to(input, streams, cut).into_iter().enumerate() {
        let (answer, kept) = answer.unwrap_or_else(|| panic!("request {i} has no answer"));
        let Some(kept) = kept else {
            continue;
        };
        assert!(kept.len() <= MAX_MESSAGE + 5, "kept {} bytes", kept.len());
        if answer.code == Code::Ok {
            let _ = templates.ids_in(kept.get(5..).unwrap_or_default());
        }
    }
    // The ids read from any bytes, as from an answer's message.
    let _ = templates.ids_in(input);
});
