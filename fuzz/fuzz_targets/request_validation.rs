//! Fuzzes request validation the way the network feeds it: the input's first byte picks the
//! limits and the message type, the rest is decoded by prost as that message and validated.
//! Validation must never panic, and every refusal must be INVALID_ARGUMENT.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vecrig::proto;
use vecrig_server::error::Error;
use vecrig_server::service::Limits;
use vecrig_server::service::{ids_from_proto, points_from_proto, search_from_proto};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    // Small limits, so that valid requests are within the fuzzer's reach.
    let limits = Limits {
        dimensions: 1 + usize::from(selector >> 4 & 3),
        max_k: 1 + u32::from(selector >> 6) * 20,
        max_batch: 4,
        max_text_bytes: 64,
    };
    let result = match selector % 3 {
        0 => proto::SearchRequest::decode(bytes).map(|r| search_from_proto(r, &limits).map(drop)),
        1 => proto::UpsertRequest::decode(bytes).map(|r| points_from_proto(r, &limits).map(drop)),
        _ => proto::DeleteRequest::decode(bytes).map(|r| ids_from_proto(r, &limits).map(drop)),
    };
    // A message prost cannot decode never reaches the service: tonic answers it.
    if let Ok(Err(error)) = result {
        assert!(matches!(error, Error::InvalidArgument { .. }), "{error:?}");
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
});
