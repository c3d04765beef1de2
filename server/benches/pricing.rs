//! What pricing a Search costs admission, measured two ways (issue 12, "decode once"):
//! decoding the whole `SearchRequest` (what `admission::Cost::estimate` does today), and
//! decoding only the fields the price reads (`k`, `ef`, `exact`, the text's length), with the
//! query vector skipped on the wire.
//!
//! Handing the decoded request on to the handler (through request extensions) would not save
//! tonic's own decode: the generated server decodes every body itself, so that path needs a
//! codec of our own. This bench says how much the cheaper of the two would buy at most.
//!
//! `cargo bench -p vecrig-server --bench pricing` (release; a bench binary, no harness).

use std::hint::black_box;
use std::time::Instant;

use prost::Message;
use vecrig::proto::{SearchRequest, Vector, search_request::Query};

/// The fields of a `SearchRequest` that its price depends on; every other field (the query
/// vector among them) is skipped while decoding.
#[derive(Clone, PartialEq, Message)]
struct PriceFields {
    #[prost(string, optional, tag = "2")]
    text: Option<String>,
    #[prost(uint32, tag = "3")]
    k: u32,
    #[prost(uint32, tag = "4")]
    ef: u32,
    #[prost(bool, tag = "5")]
    exact: bool,
}

fn time(label: &str, rounds: u32, mut f: impl FnMut() -> u32) {
    // Warm up, then take the best of five runs (the machine is shared).
    for _ in 0..rounds / 10 {
        black_box(f());
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..rounds {
            black_box(f());
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(rounds));
    }
    println!("{label:<44} {best:>8.1} ns/op");
}

fn main() {
    for dims in [128usize, 768] {
        let body = SearchRequest {
            query: Some(Query::Vector(Vector {
                values: (0..dims).map(|i| i as f32 * 0.001).collect(),
            })),
            k: 10,
            ef: 64,
            exact: false,
            with_payload: false,
        }
        .encode_to_vec();
        time(
            &format!("whole SearchRequest, {dims}-d vector"),
            200_000,
            || SearchRequest::decode(black_box(body.as_slice())).map_or(0, |r| r.k),
        );
        time(
            &format!("price fields only, {dims}-d vector"),
            200_000,
            || PriceFields::decode(black_box(body.as_slice())).map_or(0, |r| r.k),
        );
    }
    let body = SearchRequest {
        query: Some(Query::Text("a short text query of a few words".into())),
        k: 10,
        ef: 64,
        exact: false,
        with_payload: false,
    }
    .encode_to_vec();
    time("whole SearchRequest, text query", 200_000, || {
        SearchRequest::decode(black_box(body.as_slice())).map_or(0, |r| r.k)
    });
    time("price fields only, text query", 200_000, || {
        PriceFields::decode(black_box(body.as_slice())).map_or(0, |r| r.k)
    });
}
