//! The gRPC face of the engine: the only place that turns proto messages into domain types
//! (validating them on the way) and domain errors into `tonic::Status`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tonic::{Request, Response, Status};

use vecrig::proto;
use vecrig::proto::vector_index_server::VectorIndex;

use crate::admission::Admission;
use crate::config::Limits;
use crate::engine::{Engine, NewPoint, PointData, Query, Search};
use crate::error::Error;
use crate::storage::Storage;

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

/// The storage slot: empty while the server is starting (recovering data), then set once.
pub type EngineSlot = Arc<OnceLock<Arc<Storage>>>;

/// Implements `vecrig.v1.VectorIndex`.
#[derive(Debug, Clone)]
pub struct Service {
    engine: EngineSlot,
    limits: Limits,
    admission: Arc<Admission>,
    started: Instant,
}

impl Service {
    /// A service over `engine` (which may still be empty while starting).
    pub fn new(engine: EngineSlot, limits: Limits, admission: Arc<Admission>) -> Self {
        Self {
            engine,
            limits,
            admission,
            started: Instant::now(),
        }
    }

    fn storage(&self) -> Result<&Arc<Storage>, Error> {
        self.engine
            .get()
            .ok_or_else(|| Error::Unavailable("server is starting: loading the index".into()))
    }

    fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.storage().map(|s| s.engine())
    }
}

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
        let search = search_from_proto(request.into_inner(), &self.limits)?;
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
        let ids = request.into_inner().ids;
        if ids.len() > self.limits.max_batch {
            return Err(Error::invalid(
                "ids",
                format!(
                    "holds {} ids, the batch limit is {}",
                    ids.len(),
                    self.limits.max_batch
                ),
            )
            .into());
        }
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
        let admission = self.admission.stats();
        let (points, dimensions, metric, sequence) = match self.engine.get() {
            Some(storage) => {
                let engine = storage.engine();
                let shape = engine.shape();
                (
                    engine.len() as u64,
                    shape.dimensions as u32,
                    shape.metric.to_string(),
                    storage.durable_sequence(),
                )
            }
            None => (0, self.limits.dimensions as u32, String::new(), 0),
        };
        Ok(Response::new(proto::StatsResponse {
            points,
            dimensions,
            metric,
            sequence,
            in_flight: admission.in_flight,
            queued: admission.queued,
            shed_total: admission.shed_total,
            rss_bytes: resident_memory_bytes().unwrap_or(0),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }))
    }
}

/// Resident memory of this process, from `/proc/self/statm` (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * page_size())
}

fn page_size() -> u64 {
    // Every Linux platform we target uses 4 KiB base pages; reading it would need libc.
    4096
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
}
