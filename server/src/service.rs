//! The gRPC face of the engine: the only place that turns proto messages into domain types
//! (validating them on the way) and domain errors into `tonic::Status`.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use vecrig::proto;
use vecrig::proto::vector_index_server::VectorIndex;

use crate::engine::{Engine, NewPoint, PointData, Query, Search};
use crate::error::Error;
use crate::storage::{Storage, StorageCell};

/// What `Stats` reports of the load in front of the service: admission's figures, read
/// through this trait so that the service, below admission on the request path, never
/// imports it (admission implements it).
pub trait LoadFigures: Send + Sync + std::fmt::Debug {
    /// The figures now.
    fn load(&self) -> RequestLoad;

    /// The most requests in flight and queued at once since the previous call (the previous
    /// `Stats`, whoever asked), the next period starting at the figures of the moment.
    /// Without high-water marks kept: the figures now.
    fn take_peaks(&self) -> Peaks {
        let now = self.load();
        Peaks {
            in_flight: now.in_flight,
            queued: now.queued,
        }
    }

    /// The share of its `ef` a search runs with now: below 1 while the server browns out
    /// (`crate::admission::brownout`); 1 without one.
    fn search_breadth(&self) -> f64 {
        1.0
    }
}

/// High-water marks of the load in front of the service, for `Stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peaks {
    /// Most requests served at once.
    pub in_flight: u64,
    /// Most requests waiting at once.
    pub queued: u64,
}

/// Requests in front of the service, for `Stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLoad {
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests waiting for a slot now.
    pub queued: u64,
    /// Requests refused since start.
    pub shed_total: u64,
}

/// The request-size flags (flattened into the server's); their defaults are written here only.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Largest `k` a search may ask for.
    #[arg(long, env = "VECRIG_MAX_K", default_value_t = 1000)]
    pub max_k: u32,
    /// Largest number of points in one Upsert.
    #[arg(long, env = "VECRIG_MAX_BATCH", default_value_t = 1024)]
    pub max_batch: usize,
    /// Largest text (query or point) in bytes.
    #[arg(long, env = "VECRIG_MAX_TEXT_BYTES", default_value_t = 1024 * 1024)]
    pub max_text_bytes: usize,
}

/// Limits on what one request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Vector width every vector must have.
    pub dimensions: usize,
    /// Largest `k`.
    pub max_k: u32,
    /// Largest upsert batch.
    pub max_batch: usize,
    /// Largest text, in bytes.
    pub max_text_bytes: usize,
}

impl Limits {
    /// The limits of the flags, for `dimensions`-wide vectors.
    pub fn new(args: &Args, dimensions: usize) -> Result<Self, String> {
        if args.max_k == 0 {
            return Err("--max-k must be at least 1".into());
        }
        if args.max_batch == 0 {
            return Err("--max-batch must be at least 1".into());
        }
        Ok(Self {
            dimensions,
            max_k: args.max_k,
            max_batch: args.max_batch,
            max_text_bytes: args.max_text_bytes,
        })
    }

    /// The command line's defaults, for `dimensions`-wide vectors.
    pub fn defaults(dimensions: usize) -> Self {
        Self::new(&crate::flags::defaults::<Args>(), dimensions)
            .expect("the default limits are valid")
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match &error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::NotFound { .. } => Status::not_found(error.to_string()),
            Error::Unavailable(_) => Status::unavailable(error.to_string()),
            Error::Index(_) | Error::Worker(_) => {
                tracing::error!(error = %error, "internal error");
                Status::internal(error.to_string())
            }
        }
    }
}

/// Implements `vecrig.v1.VectorIndex`.
#[derive(Debug, Clone)]
pub struct Service {
    storage: StorageCell,
    limits: Limits,
    admission: Arc<dyn LoadFigures>,
    started: Instant,
}

impl Service {
    /// A service over `storage` (which may still be empty while starting).
    pub fn new(storage: StorageCell, limits: Limits, admission: Arc<dyn LoadFigures>) -> Self {
        Self {
            storage,
            limits,
            admission,
            started: Instant::now(),
        }
    }

    fn storage(&self) -> Result<&Arc<Storage>, Error> {
        self.storage
            .get()
            .ok_or_else(|| Error::Unavailable("server is starting: loading the index".into()))
    }

    fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.storage().map(|s| s.engine())
    }
}

/// Largest `ef` accepted (or `max_k`, if that is larger). The index allocates and explores
/// `ef` candidates for a search, so an unbounded one is a crash: `ef = u32::MAX` asked for
/// 34 GB of result buffers and aborted the process. 4096 is far past any useful breadth
/// (recall saturates in the hundreds).
pub const MAX_EF: u32 = 4096;

/// The one id a point cannot have: the ANN index (usearch) marks free slots with it, so a
/// point stored under it would be found by exact scans but never by approximate searches.
pub const RESERVED_ID: u64 = u64::MAX;

/// Checks that a vector has the index's width and only finite values.
pub fn check_vector(field: &str, values: &[f32], limits: &Limits) -> Result<(), Error> {
    if values.len() != limits.dimensions {
        return Err(Error::invalid(
            field,
            format!(
                "has {} values, the index has {} dimensions",
                values.len(),
                limits.dimensions
            ),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            format!("{field}.values[{i}]"),
            format!("must be finite, got {}", values[i]),
        ));
    }
    Ok(())
}

/// Checks that a text is non-empty and within the size limit.
pub fn check_text(field: &str, text: &str, limits: &Limits) -> Result<(), Error> {
    if text.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if text.len() > limits.max_text_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes, the limit is {} bytes",
                text.len(),
                limits.max_text_bytes
            ),
        ));
    }
    Ok(())
}

/// Most entries one point's payload may have. Payloads are labels to filter and display, not
/// documents: the bounds keep a point (stored in memory, the WAL and every search answer that
/// asks for payloads) from carrying megabytes of map that the message size limit alone allows.
pub const MAX_PAYLOAD_ENTRIES: usize = 256;
/// Most bytes (keys plus values) one point's payload may hold.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Checks that a payload map is within [`MAX_PAYLOAD_ENTRIES`] and [`MAX_PAYLOAD_BYTES`].
pub fn check_payload(
    field: &str,
    payload: &std::collections::HashMap<String, String>,
) -> Result<(), Error> {
    if payload.len() > MAX_PAYLOAD_ENTRIES {
        return Err(Error::invalid(
            field,
            format!(
                "has {} entries, the limit is {MAX_PAYLOAD_ENTRIES}",
                payload.len()
            ),
        ));
    }
    let bytes: usize = payload.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_PAYLOAD_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {bytes} bytes, the limit is {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Turns a `SearchRequest` into a validated [`Search`].
pub fn search_from_proto(request: proto::SearchRequest, limits: &Limits) -> Result<Search, Error> {
    let query = match request.query {
        Some(proto::search_request::Query::Vector(v)) => {
            check_vector("vector", &v.values, limits)?;
            Query::Vector(v.values)
        }
        Some(proto::search_request::Query::Text(t)) => {
            check_text("text", &t, limits)?;
            Query::Text(t)
        }
        None => return Err(Error::invalid("query", "set exactly one of vector or text")),
    };
    if request.k == 0 || request.k > limits.max_k {
        return Err(Error::invalid(
            "k",
            format!("must be in 1..={}, got {}", limits.max_k, request.k),
        ));
    }
    let max_ef = MAX_EF.max(limits.max_k);
    if request.ef > max_ef {
        return Err(Error::invalid(
            "ef",
            format!(
                "must be at most {max_ef} (0 for the server default), got {}",
                request.ef
            ),
        ));
    }
    Ok(Search {
        query,
        k: request.k as usize,
        ef: (request.ef > 0).then_some(request.ef as usize),
        exact: request.exact,
        with_payload: request.with_payload,
    })
}

/// Turns an `UpsertRequest`'s points into validated [`NewPoint`]s.
pub fn points_from_proto(
    request: proto::UpsertRequest,
    limits: &Limits,
) -> Result<Vec<NewPoint>, Error> {
    if request.points.is_empty() {
        return Err(Error::invalid("points", "must hold at least one point"));
    }
    if request.points.len() > limits.max_batch {
        return Err(Error::invalid(
            "points",
            format!(
                "holds {} points, the batch limit is {}",
                request.points.len(),
                limits.max_batch
            ),
        ));
    }
    request
        .points
        .into_iter()
        .enumerate()
        .map(|(i, point)| {
            if point.id == RESERVED_ID {
                return Err(Error::invalid(
                    format!("points[{i}].id"),
                    format!("{RESERVED_ID} is reserved by the index"),
                ));
            }
            let data = match point.data {
                Some(proto::point::Data::Vector(v)) => {
                    check_vector(&format!("points[{i}].vector"), &v.values, limits)?;
                    PointData::Vector(v.values)
                }
                Some(proto::point::Data::Text(t)) => {
                    check_text(&format!("points[{i}].text"), &t, limits)?;
                    PointData::Text(t)
                }
                None => {
                    return Err(Error::invalid(
                        format!("points[{i}]"),
                        "set exactly one of vector or text",
                    ));
                }
            };
            check_payload(&format!("points[{i}].payload"), &point.payload)?;
            Ok(NewPoint {
                id: point.id,
                data,
                payload: point.payload,
            })
        })
        .collect()
}

/// Checks a `DeleteRequest`'s ids against the batch limit.
pub fn ids_from_proto(request: proto::DeleteRequest, limits: &Limits) -> Result<Vec<u64>, Error> {
    if request.ids.len() > limits.max_batch {
        return Err(Error::invalid(
            "ids",
            format!(
                "holds {} ids, the batch limit is {}",
                request.ids.len(),
                limits.max_batch
            ),
        ));
    }
    Ok(request.ids)
}

#[tonic::async_trait]
impl VectorIndex for Service {
    async fn upsert(
        &self,
        request: Request<proto::UpsertRequest>,
    ) -> Result<Response<proto::UpsertResponse>, Status> {
        let storage = self.storage()?;
        let request = request.into_inner();
        let wait = request.wait;
        let points = points_from_proto(request, &self.limits)?;
        let applied = storage.upsert(points, wait).await?;
        Ok(Response::new(proto::UpsertResponse {
            sequence: applied.sequence,
            upserted: applied.touched as u32,
        }))
    }

    async fn search(
        &self,
        request: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        let engine = self.engine()?;
        let search = search_from_proto(request.into_inner(), &self.limits)?
            .narrowed(self.admission.search_breadth(), engine.default_ef());
        let hits = engine.search(search).await?;
        Ok(Response::new(proto::SearchResponse {
            hits: hits
                .into_iter()
                .map(|h| proto::Hit {
                    id: h.id,
                    distance: h.distance,
                    payload: h.payload.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let storage = self.storage()?;
        let ids = ids_from_proto(request.into_inner(), &self.limits)?;
        let applied = storage.delete(ids).await?;
        Ok(Response::new(proto::DeleteResponse {
            sequence: applied.sequence,
            deleted: applied.touched as u32,
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let engine = self.engine()?;
        let point = engine.get(request.into_inner().id)?;
        Ok(Response::new(proto::GetResponse {
            point: Some(proto::Point {
                id: point.id,
                data: Some(proto::point::Data::Vector(proto::Vector {
                    values: point.vector,
                })),
                payload: point.payload,
            }),
        }))
    }

    async fn stats(
        &self,
        _request: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let admission = self.admission.load();
        let peaks = self.admission.take_peaks();
        let (points, dimensions, metric, sequence, unindexed) = match self.storage.get() {
            Some(storage) => {
                let engine = storage.engine();
                let shape = engine.shape();
                (
                    engine.len() as u64,
                    shape.dimensions as u32,
                    shape.metric.to_string(),
                    storage.durable_sequence(),
                    engine.tail_len() as u64,
                )
            }
            None => (0, self.limits.dimensions as u32, String::new(), 0, 0),
        };
        Ok(Response::new(proto::StatsResponse {
            points,
            dimensions,
            metric,
            sequence,
            in_flight: admission.in_flight,
            queued: admission.queued,
            shed_total: admission.shed_total,
            rss_bytes: crate::process::recent_resident_memory_bytes(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            unindexed,
            peak_in_flight: peaks.in_flight.max(admission.in_flight),
            peak_queued: peaks.queued.max(admission.queued),
            search_breadth: self.admission.search_breadth(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic::Code;

    fn limits() -> Limits {
        Limits {
            dimensions: 3,
            max_k: 10,
            max_batch: 2,
            max_text_bytes: 16,
        }
    }

    fn vector(values: Vec<f32>) -> Option<proto::search_request::Query> {
        Some(proto::search_request::Query::Vector(proto::Vector {
            values,
        }))
    }

    fn search(query: Option<proto::search_request::Query>, k: u32) -> Result<Search, Error> {
        search_from_proto(
            proto::SearchRequest {
                query,
                k,
                ..Default::default()
            },
            &limits(),
        )
    }

    fn point(data: Option<proto::point::Data>) -> proto::Point {
        proto::Point {
            id: 1,
            data,
            payload: HashMap::new(),
        }
    }

    /// Every malformed request, the field its message names, and that it maps to
    /// INVALID_ARGUMENT.
    #[test]
    fn validation_table() {
        let text = |t: &str| Some(proto::search_request::Query::Text(t.into()));
        let cases: Vec<(&str, Result<Search, Error>, &str)> = vec![
            ("too few dims", search(vector(vec![1.0, 2.0]), 1), "vector"),
            ("too many dims", search(vector(vec![1.0; 4]), 1), "vector"),
            (
                "nan",
                search(vector(vec![1.0, f32::NAN, 0.0]), 1),
                "vector.values[1]",
            ),
            (
                "inf",
                search(vector(vec![f32::INFINITY, 0.0, 0.0]), 1),
                "vector.values[0]",
            ),
            ("no query", search(None, 1), "query"),
            ("empty text", search(text(""), 1), "text"),
            ("blank text", search(text("   "), 1), "text"),
            ("long text", search(text(&"x".repeat(17)), 1), "text"),
            ("k zero", search(vector(vec![1.0; 3]), 0), "k"),
            ("k above max", search(vector(vec![1.0; 3]), 11), "k"),
            (
                // Once an abort: the index allocated ef candidates (34 GB for u32::MAX).
                "ef above max",
                search_from_proto(
                    proto::SearchRequest {
                        query: vector(vec![1.0; 3]),
                        k: 1,
                        ef: u32::MAX,
                        ..Default::default()
                    },
                    &limits(),
                ),
                "ef",
            ),
        ];
        for (name, result, field) in cases {
            let error = result.expect_err(name);
            assert!(
                matches!(&error, Error::InvalidArgument { field: f, .. } if f == field),
                "{name}: {error:?}"
            );
            assert_eq!(Status::from(error).code(), Code::InvalidArgument, "{name}");
        }
        assert!(search(vector(vec![1.0; 3]), 10).is_ok());
        assert!(search(text("hello"), 1).is_ok());

        let upsert = |points: Vec<proto::Point>| {
            points_from_proto(
                proto::UpsertRequest {
                    points,
                    wait: false,
                },
                &limits(),
            )
        };
        let vec_data = |v: Vec<f32>| Some(proto::point::Data::Vector(proto::Vector { values: v }));
        let upsert_cases = vec![
            ("empty batch", upsert(vec![]), "points"),
            (
                "batch too big",
                upsert(vec![point(vec_data(vec![0.0; 3])); 3]),
                "points",
            ),
            ("no data", upsert(vec![point(None)]), "points[0]"),
            (
                "bad dims",
                upsert(vec![
                    point(vec_data(vec![0.0; 3])),
                    point(vec_data(vec![0.0; 2])),
                ]),
                "points[1].vector",
            ),
            (
                "empty text",
                upsert(vec![point(Some(proto::point::Data::Text(String::new())))]),
                "points[0].text",
            ),
            (
                "reserved id",
                upsert(vec![proto::Point {
                    id: RESERVED_ID,
                    ..point(vec_data(vec![0.0; 3]))
                }]),
                "points[0].id",
            ),
        ];
        for (name, result, field) in upsert_cases {
            let error = result.expect_err(name);
            assert!(
                matches!(&error, Error::InvalidArgument { field: f, .. } if f == field),
                "{name}: {error:?}"
            );
        }
    }

    #[test]
    fn error_to_status_mapping() {
        let cases = [
            (Error::invalid("k", "bad"), Code::InvalidArgument),
            (Error::NotFound { id: 3 }, Code::NotFound),
            (Error::Unavailable("starting".into()), Code::Unavailable),
            (Error::Worker("panicked".into()), Code::Internal),
            (
                Error::Index(crate::index::IndexError::Ann("x".into())),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
        assert_eq!(
            Status::from(Error::invalid("k", "must be in 1..=10, got 0")).message(),
            "k: must be in 1..=10, got 0"
        );
    }

    #[test]
    fn payload_maps_are_bounded_in_entries_and_bytes() {
        let upsert = |payload: HashMap<String, String>| {
            let mut p = point(Some(proto::point::Data::Vector(proto::Vector {
                values: vec![0.0; 3],
            })));
            p.payload = payload;
            points_from_proto(
                proto::UpsertRequest {
                    points: vec![p],
                    wait: false,
                },
                &limits(),
            )
        };
        let entries = |n: usize| (0..n).map(|i| (i.to_string(), String::new())).collect();
        assert!(upsert(entries(MAX_PAYLOAD_ENTRIES)).is_ok());
        let big = HashMap::from([("k".to_string(), "v".repeat(MAX_PAYLOAD_BYTES - 1))]);
        assert!(upsert(big).is_ok());
        let too_big = HashMap::from([("k".to_string(), "v".repeat(MAX_PAYLOAD_BYTES))]);
        for (name, payload) in [
            ("too many entries", entries(MAX_PAYLOAD_ENTRIES + 1)),
            ("too many bytes", too_big),
        ] {
            let error = upsert(payload).expect_err(name);
            assert!(
                matches!(&error, Error::InvalidArgument { field, .. } if field == "points[0].payload"),
                "{name}: {error:?}"
            );
        }
    }

    /// Properties of validation over requests built from arbitrary fields, and over arbitrary
    /// bytes decoded as requests: never a panic; an error is always INVALID_ARGUMENT; a
    /// request is accepted exactly when an independent statement of the rules says it is
    /// valid; and what is accepted runs on a real engine without an error or a panic.
    mod properties {
        use super::*;
        use crate::engine::Engine;
        use crate::index::store::Payload;
        use crate::index::{HnswParams, Metric};
        use crate::storage::wal::Record;
        use proptest::prelude::*;
        use prost::Message;
        use std::collections::HashSet;

        /// `cases` per property, unless `PROPTEST_CASES` asks for more (or fewer) for a deep
        /// local run. Kept small: these run in CI on every push.
        fn config(cases: u32) -> ProptestConfig {
            let mut config = ProptestConfig::default();
            if std::env::var_os("PROPTEST_CASES").is_none() {
                config.cases = cases;
            }
            config
        }

        fn any_limits() -> impl Strategy<Value = Limits> {
            (1..8usize, 1..50u32, 1..6usize, 1..48usize).prop_map(
                |(dimensions, max_k, max_batch, max_text_bytes)| Limits {
                    dimensions,
                    max_k,
                    max_batch,
                    max_text_bytes,
                },
            )
        }

        /// Mostly ordinary values, often NaN, infinities, extremes and subnormals.
        fn float() -> impl Strategy<Value = f32> {
            prop_oneof![
                3 => -10.0f32..10.0,
                1 => prop::num::f32::ANY,
                1 => prop::sample::select(vec![
                    f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN,
                    f32::MIN_POSITIVE, -0.0, 0.0,
                ]),
            ]
        }

        /// Mostly valid (the right width, ordinary values), else any width and any values.
        fn values(dimensions: usize) -> impl Strategy<Value = Vec<f32>> {
            prop_oneof![
                3 => prop::collection::vec(-10.0f32..10.0, dimensions),
                1 => prop::collection::vec(float(), dimensions),
                1 => prop::collection::vec(float(), 0..dimensions + 3),
            ]
        }

        /// Empty, blank, short, long, multi-byte and control-character texts.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[a-z]{1,5}( [a-z]{1,5}){0,2}",
                1 => Just(String::new()),
                1 => "[ \t\n\r]{1,4}",
                1 => ".{0,40}",
                1 => "\\PC{10,30}",
            ]
        }

        fn payload() -> impl Strategy<Value = Payload> {
            prop_oneof![
                4 => prop::collection::hash_map(".{0,4}", ".{0,8}", 0..4),
                1 => prop::collection::hash_map("[a-z]{1,6}", ".{0,2}", 100..300),
            ]
        }

        /// Edge ids, and few distinct ones so that batches hold duplicates.
        fn id() -> impl Strategy<Value = u64> {
            prop_oneof![
                6 => 0..6u64,
                1 => Just(u64::MAX),
                1 => Just(u64::MAX - 1),
                1 => any::<u64>(),
            ]
        }

        /// Mostly within `1..=max`, else around and far beyond it.
        fn count(max: u32) -> impl Strategy<Value = u32> {
            prop_oneof![
                4 => 1..=max,
                1 => 0..=max.saturating_add(2),
                1 => Just(u32::MAX),
                1 => any::<u32>(),
            ]
        }

        fn batch(max: usize) -> impl Strategy<Value = usize> {
            prop_oneof![4 => 1..=max, 1 => 0..max + 3]
        }

        fn search_request(limits: Limits) -> impl Strategy<Value = proto::SearchRequest> {
            use proto::search_request::Query;
            let query = prop_oneof![
                1 => Just(None),
                4 => values(limits.dimensions)
                    .prop_map(|values| Some(Query::Vector(proto::Vector { values }))),
                2 => text().prop_map(|t| Some(Query::Text(t))),
            ];
            let ef = prop_oneof![2 => Just(0), 1 => count(MAX_EF.max(limits.max_k))];
            (query, count(limits.max_k), ef, any::<bool>(), any::<bool>()).prop_map(
                |(query, k, ef, exact, with_payload)| proto::SearchRequest {
                    query,
                    k,
                    ef,
                    exact,
                    with_payload,
                },
            )
        }

        fn point(limits: Limits) -> impl Strategy<Value = proto::Point> {
            let data = prop_oneof![
                1 => Just(None),
                4 => values(limits.dimensions)
                    .prop_map(|values| Some(proto::point::Data::Vector(proto::Vector { values }))),
                2 => text().prop_map(|t| Some(proto::point::Data::Text(t))),
            ];
            (id(), data, payload()).prop_map(|(id, data, payload)| proto::Point {
                id,
                data,
                payload,
            })
        }

        fn upsert_request(limits: Limits) -> impl Strategy<Value = proto::UpsertRequest> {
            (
                batch(limits.max_batch)
                    .prop_flat_map(move |n| prop::collection::vec(point(limits), n)),
                any::<bool>(),
            )
                .prop_map(|(points, wait)| proto::UpsertRequest { points, wait })
        }

        fn delete_request(limits: Limits) -> impl Strategy<Value = proto::DeleteRequest> {
            batch(limits.max_batch)
                .prop_flat_map(|n| prop::collection::vec(id(), n))
                .prop_map(|ids| proto::DeleteRequest { ids })
        }

        /// The rules, stated again independently of the code under test.
        fn vector_ok(values: &[f32], limits: &Limits) -> bool {
            values.len() == limits.dimensions && values.iter().all(|v| v.is_finite())
        }

        fn text_ok(text: &str, limits: &Limits) -> bool {
            !text.trim().is_empty() && text.len() <= limits.max_text_bytes
        }

        fn search_ok(request: &proto::SearchRequest, limits: &Limits) -> bool {
            let query = match &request.query {
                Some(proto::search_request::Query::Vector(v)) => vector_ok(&v.values, limits),
                Some(proto::search_request::Query::Text(t)) => text_ok(t, limits),
                None => false,
            };
            query
                && (1..=limits.max_k).contains(&request.k)
                && request.ef <= MAX_EF.max(limits.max_k)
        }

        fn point_ok(point: &proto::Point, limits: &Limits) -> bool {
            let payload_bytes: usize = point.payload.iter().map(|(k, v)| k.len() + v.len()).sum();
            point.id != u64::MAX
                && point.payload.len() <= MAX_PAYLOAD_ENTRIES
                && payload_bytes <= MAX_PAYLOAD_BYTES
                && match &point.data {
                    Some(proto::point::Data::Vector(v)) => vector_ok(&v.values, limits),
                    Some(proto::point::Data::Text(t)) => text_ok(t, limits),
                    None => false,
                }
        }

        fn upsert_ok(request: &proto::UpsertRequest, limits: &Limits) -> bool {
            (1..=limits.max_batch).contains(&request.points.len())
                && request.points.iter().all(|p| point_ok(p, limits))
        }

        /// A refusal is INVALID_ARGUMENT and names a field of the request.
        fn check_refusal(error: Error, fields: &[&str]) -> Result<(), TestCaseError> {
            let Error::InvalidArgument { field, .. } = &error else {
                return Err(TestCaseError::fail(format!(
                    "not InvalidArgument: {error:?}"
                )));
            };
            let root = field.split(['[', '.']).next().unwrap_or_default();
            prop_assert!(fields.contains(&root), "unexpected field {}", field);
            prop_assert_eq!(Status::from(error).code(), Code::InvalidArgument);
            Ok(())
        }

        fn check_search(
            request: proto::SearchRequest,
            limits: &Limits,
        ) -> Result<(), TestCaseError> {
            let valid = search_ok(&request, limits);
            match search_from_proto(request.clone(), limits) {
                Ok(search) => {
                    prop_assert!(valid, "accepted an invalid request: {:?}", request);
                    prop_assert_eq!(search.k, request.k as usize);
                    prop_assert_eq!(search.ef, (request.ef > 0).then_some(request.ef as usize));
                    prop_assert_eq!(
                        (search.exact, search.with_payload),
                        (request.exact, request.with_payload)
                    );
                }
                Err(error) => {
                    prop_assert!(!valid, "refused a valid request: {:?}: {}", request, error);
                    check_refusal(error, &["query", "vector", "text", "k", "ef"])?;
                }
            }
            Ok(())
        }

        fn check_upsert(
            request: proto::UpsertRequest,
            limits: &Limits,
        ) -> Result<(), TestCaseError> {
            let valid = upsert_ok(&request, limits);
            match points_from_proto(request.clone(), limits) {
                Ok(points) => {
                    prop_assert!(valid, "accepted an invalid request: {:?}", request);
                    prop_assert_eq!(points.len(), request.points.len());
                    for (point, given) in points.iter().zip(&request.points) {
                        prop_assert_eq!(point.id, given.id);
                        prop_assert_eq!(&point.payload, &given.payload);
                        let data_kept = match (&point.data, &given.data) {
                            (PointData::Vector(v), Some(proto::point::Data::Vector(g))) => {
                                *v == g.values
                            }
                            (PointData::Text(t), Some(proto::point::Data::Text(g))) => t == g,
                            _ => false,
                        };
                        prop_assert!(data_kept);
                    }
                }
                Err(error) => {
                    prop_assert!(!valid, "refused a valid request: {:?}: {}", request, error);
                    check_refusal(error, &["points"])?;
                }
            }
            Ok(())
        }

        fn check_delete(
            request: proto::DeleteRequest,
            limits: &Limits,
        ) -> Result<(), TestCaseError> {
            let valid = request.ids.len() <= limits.max_batch;
            match ids_from_proto(request.clone(), limits) {
                Ok(ids) => {
                    prop_assert!(valid);
                    prop_assert_eq!(ids, request.ids);
                }
                Err(error) => {
                    prop_assert!(!valid);
                    check_refusal(error, &["ids"])?;
                }
            }
            Ok(())
        }

        /// Flips, overwrites, cuts and extends an encoded message.
        fn mutate(
            mut bytes: Vec<u8>,
            changes: &[(prop::sample::Index, u8)],
            cut: Option<prop::sample::Index>,
            extra: &[u8],
        ) -> Vec<u8> {
            if !bytes.is_empty() {
                for (at, value) in changes {
                    let at = at.index(bytes.len());
                    bytes[at] = *value;
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes.extend_from_slice(extra);
            bytes
        }

        fn mutation() -> impl Strategy<
            Value = (
                Vec<(prop::sample::Index, u8)>,
                Option<prop::sample::Index>,
                Vec<u8>,
            ),
        > {
            (
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                prop::option::of(any::<prop::sample::Index>()),
                prop::collection::vec(any::<u8>(), 0..12),
            )
        }

        /// Limits drawn at random, and a value drawn for them.
        fn with_limits<S: Strategy>(
            strategy: impl Fn(Limits) -> S,
        ) -> impl Strategy<Value = (Limits, S::Value)> {
            any_limits().prop_flat_map(move |limits| (Just(limits), strategy(limits)))
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn search_validation((limits, request) in with_limits(search_request)) {
                check_search(request, &limits)?;
            }

            #[test]
            fn upsert_validation((limits, request) in with_limits(upsert_request)) {
                check_upsert(request, &limits)?;
            }

            #[test]
            fn delete_validation((limits, request) in with_limits(delete_request)) {
                check_delete(request, &limits)?;
            }

            /// What the network hands the service: arbitrary bytes, and encodings of generated
            /// requests with bytes changed, cut or added. Decoding may fail (the transport
            /// answers that itself); whatever decodes is validated by the same rules.
            #[test]
            fn decoded_bytes_validation(
                (limits, (search, upsert, delete)) in with_limits(|l| {
                    (search_request(l), upsert_request(l), delete_request(l))
                }),
                (changes, cut, extra) in mutation(),
                raw in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                let candidates = [
                    raw,
                    mutate(search.encode_to_vec(), &changes, cut, &extra),
                    mutate(upsert.encode_to_vec(), &changes, cut, &extra),
                    mutate(delete.encode_to_vec(), &changes, cut, &extra),
                ];
                for bytes in &candidates {
                    if let Ok(request) = proto::SearchRequest::decode(&bytes[..]) {
                        check_search(request, &limits)?;
                    }
                    if let Ok(request) = proto::UpsertRequest::decode(&bytes[..]) {
                        check_upsert(request, &limits)?;
                    }
                    if let Ok(request) = proto::DeleteRequest::decode(&bytes[..]) {
                        check_delete(request, &limits)?;
                    }
                }
            }
        }

        /// One step of a session against the engine.
        #[derive(Debug, Clone)]
        enum Op {
            Upsert(proto::UpsertRequest),
            Search(proto::SearchRequest),
            Delete(proto::DeleteRequest),
        }

        fn ops(limits: Limits) -> impl Strategy<Value = Vec<Op>> {
            let op = prop_oneof![
                3 => upsert_request(limits).prop_map(Op::Upsert),
                2 => search_request(limits).prop_map(Op::Search),
                1 => delete_request(limits).prop_map(Op::Delete),
            ];
            prop::collection::vec(op, 1..12)
        }

        fn metric() -> impl Strategy<Value = Metric> {
            prop::sample::select(vec![Metric::Cosine, Metric::L2, Metric::Ip])
        }

        /// Runs `ops` through validation and, when accepted, on `engine` in the order the
        /// writer would, against a model of what the store must hold.
        fn run_session(
            engine: &Engine,
            limits: &Limits,
            ops: Vec<Op>,
        ) -> Result<(), TestCaseError> {
            let mut model: HashMap<u64, Vec<f32>> = HashMap::new();
            let mut sequence = 0;
            for op in ops {
                match op {
                    Op::Upsert(request) => {
                        let Ok(points) = points_from_proto(request, limits) else {
                            continue;
                        };
                        let record = engine.prepare(points);
                        sequence += 1;
                        engine.apply(sequence, &record).expect("apply upsert");
                        if let Record::Upsert(points) = record {
                            for (id, vector, _) in points {
                                model.insert(id, vector);
                            }
                        }
                    }
                    Op::Delete(request) => {
                        let Ok(ids) = ids_from_proto(request, limits) else {
                            continue;
                        };
                        let existed: HashSet<u64> = ids
                            .iter()
                            .copied()
                            .filter(|id| model.contains_key(id))
                            .collect();
                        sequence += 1;
                        let record = Record::Delete(ids.clone());
                        let deleted = engine.apply(sequence, &record).expect("apply delete");
                        prop_assert_eq!(deleted, existed.len());
                        for id in ids {
                            model.remove(&id);
                        }
                    }
                    Op::Search(request) => {
                        let Ok(search) = search_from_proto(request, limits) else {
                            continue;
                        };
                        let hits = engine.search_blocking(&search).expect("search");
                        prop_assert!(hits.len() <= search.k);
                        prop_assert!(hits.iter().all(|h| model.contains_key(&h.id)));
                        if search.exact {
                            prop_assert_eq!(hits.len(), search.k.min(model.len()));
                            let ordered = hits
                                .windows(2)
                                .all(|w| w[0].distance.total_cmp(&w[1].distance).is_le());
                            prop_assert!(ordered, "exact hits out of order: {:?}", hits);
                        }
                    }
                }
            }
            prop_assert_eq!(engine.len(), model.len());
            for (id, vector) in &model {
                prop_assert_eq!(&engine.get(*id).expect("stored").vector, vector);
            }
            // With ordinary values (no distance overflowing to infinity), an approximate search
            // as wide as this tiny index finds every point in it, whatever its id.
            let ordinary = model.values().flatten().all(|v| v.abs() < 1e3);
            if ordinary && let Some(query) = model.values().next() {
                let search = Search {
                    query: crate::engine::Query::Vector(query.clone()),
                    k: model.len(),
                    ef: None,
                    exact: false,
                    with_payload: false,
                };
                let hits = engine.search_blocking(&search).expect("search");
                let found: HashSet<u64> = hits.iter().map(|h| h.id).collect();
                let stored: HashSet<u64> = model.keys().copied().collect();
                prop_assert_eq!(found, stored);
            }
            Ok(())
        }

        proptest! {
            // Each case builds a real index: fewer of them.
            #![proptest_config(config(64))]

            /// Whatever validation accepts runs on a real engine without an error or a panic:
            /// searches return at most k hits, all stored points (exact ones nearest first);
            /// deletes count the ids that existed; the store ends up holding the last write of
            /// each id; and a search as wide as the index finds every point in it.
            #[test]
            fn accepted_requests_run_on_a_real_engine(
                (limits, metric, ops) in (1..6usize, metric()).prop_flat_map(|(dims, metric)| {
                    let limits =
                        Limits { dimensions: dims, max_k: 16, max_batch: 4, max_text_bytes: 32 };
                    (Just(limits), Just(metric), ops(limits))
                }),
            ) {
                let shape = crate::engine::Shape { dimensions: limits.dimensions, metric };
                let params = HnswParams { search_threads: 1, ..HnswParams::default() };
                let engine = Engine::new(shape, params, 16).expect("engine");
                run_session(&engine, &limits, ops)?;
            }
        }
    }
}
