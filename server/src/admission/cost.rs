//! What a request is expected to cost, priced from its method and body before it waits.

use prost::Message;

use crate::method::Method;

/// Permits per slot: costs are counted in quarter slots, so that moderately wider requests
/// can cost a little more than the cheapest without costing double.
pub(super) const UNITS_PER_SLOT: u32 = 4;

/// The fields of a `vecrig.v1.SearchRequest` that its price reads (same tags); every other
/// field, the query vector first of all, is skipped on the wire instead of decoded. Measured
/// (`benches/pricing.rs`): 21 ns instead of 408 ns for a 128-d vector query, 37 ns instead of
/// 1.8 µs for a 768-d one; the same for a text query. The body is still decoded whole once,
/// by tonic, for the handler.
///
/// It reads what a whole decode would, but for two bodies no client of ours sends: one that
/// sets both `vector` and `text` (the text is priced even if the vector came last), and one
/// whose vector is malformed inside (priced as the search it asks for, not as one slot;
/// tonic refuses it either way).
#[derive(Clone, PartialEq, Message)]
struct PriceFields {
    /// `query.text`.
    #[prost(string, optional, tag = "2")]
    text: Option<String>,
    /// `k`.
    #[prost(uint32, tag = "3")]
    k: u32,
    /// `ef`.
    #[prost(uint32, tag = "4")]
    ef: u32,
    /// `exact`.
    #[prost(bool, tag = "5")]
    exact: bool,
}

/// What a request is expected to cost, in units ([`UNITS_PER_SLOT`] to a slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Units held while it runs.
    pub units: u32,
}

impl Cost {
    /// The cheapest request: one slot.
    pub const ONE_SLOT: Cost = Cost {
        units: UNITS_PER_SLOT,
    };

    /// Prices a request from its method and gRPC message body (a 5-byte frame header and the
    /// protobuf). Anything it cannot read costs one slot: the service will reject it anyway.
    pub fn estimate(method: Method, body: &[u8]) -> Cost {
        let message = match body {
            // Uncompressed single frame; compressed or odd bodies are priced as one slot.
            [0, _, _, _, _, rest @ ..] => rest,
            _ => return Cost::ONE_SLOT,
        };
        let slot = UNITS_PER_SLOT;
        let units = match method {
            Method::Search => match PriceFields::decode(message) {
                Ok(request) => {
                    // Exact scans touch every point: a few of them fill a server.
                    let base = if request.exact { 8 * slot } else { slot };
                    // Wider searches visit proportionally more of the graph.
                    let breadth = request.k.max(request.ef).saturating_sub(128) / 64;
                    let text = request.text.map_or(0, |t| (t.len() / 16_384) as u32);
                    base.saturating_add(breadth).saturating_add(text)
                }
                Err(_) => slot,
            },
            // Each inserted point costs graph work; priced by size rather than decoded
            // twice, ~16 KiB (a few dozen points) to a unit.
            Method::Upsert => slot.saturating_add((message.len() / 16_384) as u32),
            _ => slot,
        };
        Cost { units }
    }

    /// This cost in slots (for estimates).
    pub(super) fn slots(self) -> f64 {
        f64::from(self.units) / f64::from(UNITS_PER_SLOT)
    }

    /// Whether it waits in the expensive requests' queue.
    pub(super) fn is_heavy(self) -> bool {
        self.units > UNITS_PER_SLOT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vecrig::proto::{SearchRequest, UpsertRequest, Vector, search_request::Query};

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn search(k: u32, ef: u32, exact: bool) -> Vec<u8> {
        framed(&SearchRequest {
            query: Some(Query::Vector(Vector {
                values: vec![0.0; 8],
            })),
            k,
            ef,
            exact,
            with_payload: false,
        })
    }

    #[test]
    fn costs_grow_with_the_work_a_request_asks_for() {
        let path = "/vecrig.v1.VectorIndex/Search";
        let cheap = Cost::estimate(Method::of(path), &search(10, 0, false));
        assert_eq!(cheap, Cost::ONE_SLOT);
        let wide = Cost::estimate(Method::of(path), &search(1000, 0, false));
        assert!(wide.units > cheap.units, "{wide:?}");
        let exact = Cost::estimate(Method::of(path), &search(10, 0, true));
        assert!(exact.units >= 8 * cheap.units, "{exact:?}");
        let batch = framed(&UpsertRequest {
            points: (0..512)
                .map(|id| vecrig::proto::Point {
                    id,
                    data: Some(vecrig::proto::point::Data::Vector(Vector {
                        values: vec![0.5; 128],
                    })),
                    ..Default::default()
                })
                .collect(),
            wait: false,
        });
        let upsert = Cost::estimate(Method::of("/vecrig.v1.VectorIndex/Upsert"), &batch);
        assert!(upsert.units >= 4 * cheap.units, "{upsert:?}");
        // Unreadable or compressed bodies cost one slot; the service rejects them.
        assert_eq!(
            Cost::estimate(Method::of(path), b"\x00\x00\x00\x00\x03abc"),
            cheap
        );
        assert_eq!(Cost::estimate(Method::of(path), b"\x01\x00"), cheap);
        assert_eq!(Cost::estimate(Method::of(path), b""), cheap);
    }

    #[test]
    fn the_price_fields_read_what_a_whole_decode_reads() {
        let long_text = "word ".repeat(8_000);
        for query in [
            Query::Vector(Vector {
                values: vec![0.25; 768],
            }),
            Query::Text(long_text.clone()),
        ] {
            for (k, ef, exact) in [(10, 0, false), (1000, 4096, true), (0, 300, false)] {
                let request = SearchRequest {
                    query: Some(query.clone()),
                    k,
                    ef,
                    exact,
                    with_payload: true,
                };
                let bytes = request.encode_to_vec();
                let fields = PriceFields::decode(bytes.as_slice()).expect("decodes");
                let text = match &request.query {
                    Some(Query::Text(t)) => Some(t.clone()),
                    _ => None,
                };
                assert_eq!((fields.k, fields.ef, fields.exact), (k, ef, exact));
                assert_eq!(fields.text, text);
            }
        }
        // A 40 KB text costs two units more than a vector query.
        let path = "/vecrig.v1.VectorIndex/Search";
        let text = framed(&SearchRequest {
            query: Some(Query::Text(long_text)),
            k: 10,
            ..Default::default()
        });
        assert_eq!(
            Cost::estimate(Method::of(path), &text).units,
            UNITS_PER_SLOT + 2
        );
    }
}
