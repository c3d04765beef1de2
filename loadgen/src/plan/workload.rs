//! Seeded request generators: given the same seed, the same requests, in the same order for
//! each user.
//!
//! - `spec`: the specification's query texts (`stress_test_user_{user}_query_{i}`, ...);
//! - `text`: realistic short texts in the vocabulary of the server's `--preload` data;
//! - `vector`: vectors drawn from the same clustered distribution as the `--preload` data
//!   (`exact`: the same, answered by brute-force scan);
//! - `fixed`: one vector search, the same every time, as h2load or ghz send one request: for
//!   comparing with such tools on the very same request, and the server's best case (a query
//!   asked again and again walks the same part of the index, in warm caches);
//! - `large-text`: ~150 KB texts (the memory-pressure scenario);
//! - `mixed`: vector searches with a chosen fraction of upserts (batches of new points);
//! - ingest: the seeded data set of [`crate::dynamic::Truth`], batch by batch, through the
//!   target's write method;
//! - durable (fault runs only): as mixed, but every upserted point is stamped and its
//!   acknowledgement recorded, so it can be read back after a fault ([`crate::measure::acks`]).
//!
//! Every request is rendered from a template set ([`crate::dynamic::Templates`]): vecrig's own
//! ([`Templates::vecrig_v1`], the default) or a templated target's, so a workload says what
//! to ask and the target's templates say how. A target without a text search answers the
//! text workloads' place with vector searches, one without an exact search the usual search,
//! one without a write method the writes of `mixed` with searches.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vecrig::proto::{self, search_request};
use vecrig::synthetic::Synthetic;

use crate::dynamic::template::GRPC_PREFIX;
use crate::dynamic::{Fill, Point, TemplatedMethod, Templates, Truth};
use crate::plan::dataset::Queries;

/// Which requests to send.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadKind {
    /// Text searches from a template: `{user}`, `{i}` and `{c}` (concurrency) are replaced.
    Spec(String),
    /// Text searches in the preload vocabulary.
    Text,
    /// Vector searches from the preload distribution.
    Vector,
    /// Exact (brute-force) vector searches: expensive requests, so a server is overloaded
    /// with little client effort.
    ExactVector,
    /// One vector search, [`fixed_query`], sent by every user every time.
    FixedVector,
    /// Text searches of about `bytes` bytes: the template repeated, then `_iteration_{i}`.
    LargeText {
        /// Approximate size of each query.
        bytes: usize,
    },
    /// Vector searches, and upserts with probability `upsert_fraction`.
    Mixed {
        /// Fraction of requests that are upserts.
        upsert_fraction: f64,
        /// Points per upsert.
        batch: usize,
    },
    /// As `Mixed`, with every point stamped and its acknowledgement recorded in `acks`, and
    /// `pad_bytes` of payload per point (to fill the server's memory).
    Durable {
        /// Fraction of requests that are upserts.
        upsert_fraction: f64,
        /// Points per upsert.
        batch: usize,
        /// Extra payload bytes per point.
        pad_bytes: usize,
        /// Where acknowledged points are recorded.
        acks: crate::measure::acks::Acks,
    },
    /// The data set of `truth` written through the target's write method, batch
    /// `user + i * writers` by user `user` at its `i`-th request.
    Ingest {
        /// The data set, and what of it was acknowledged.
        truth: Arc<Truth>,
        /// Users writing at once.
        writers: u64,
    },
}

impl std::str::FromStr for WorkloadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "text" => WorkloadKind::Text,
            "vector" => WorkloadKind::Vector,
            "exact" => WorkloadKind::ExactVector,
            "fixed" => WorkloadKind::FixedVector,
            "mixed" => WorkloadKind::Mixed {
                upsert_fraction: 0.1,
                batch: 16,
            },
            "spec" => WorkloadKind::Spec("stress_test_user_{user}_query_{i}".into()),
            other => {
                return Err(format!(
                    "unknown workload {other:?}: expected spec, text, vector, fixed, exact or mixed"
                ));
            }
        })
    }
}

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A request rendered from the target's templates.
    Call(Call),
    /// Nothing left to send: the user is done (ingest, once the data set is written).
    Done,
}

/// A request, encoded, and what the run needs to know of it. Which template set it was
/// rendered from is the phase's ([`Workload::templates`]): the method's path and how to read
/// its answer are found there.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The request as a gRPC frame: a flag byte (uncompressed), the message's length, the
    /// message. Shared by every attempt, and sent as it is.
    pub frame: bytes::Bytes,
    /// What it is.
    pub kind: CallKind,
}

/// What a request is, as far as the run cares.
#[derive(Debug, Clone, PartialEq)]
pub enum CallKind {
    /// A search for `query`'s `k` neighbours.
    Search {
        /// What was asked (for the recall check).
        query: Query,
        /// Neighbours asked for.
        k: u32,
    },
    /// A batch of new points; when stamped, its ids are recorded in the acknowledgements once
    /// answered OK.
    Write {
        /// Where to record, and what.
        acked: Option<(crate::measure::acks::Acks, Vec<u64>)>,
    },
    /// Batch `batch` of the data set of `truth`, acknowledged there when answered OK.
    Ingest {
        /// The data set.
        truth: Arc<Truth>,
        /// The batch.
        batch: usize,
    },
}

/// What a search asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// The neighbours of a vector.
    Vector(Vec<f32>),
    /// The neighbours of a text (embedded by the target).
    Text(String),
}

impl Call {
    /// The request message (the frame without its prefix).
    pub fn message(&self) -> &[u8] {
        self.frame.get(GRPC_PREFIX..).unwrap_or_default()
    }

    /// [`message`](Self::message), sharing the frame's buffer.
    pub fn message_bytes(&self) -> bytes::Bytes {
        self.frame.slice(GRPC_PREFIX.min(self.frame.len())..)
    }

    /// Whether it writes (else it searches).
    pub fn is_write(&self) -> bool {
        matches!(self.kind, CallKind::Write { .. } | CallKind::Ingest { .. })
    }

    /// A search as vecrig's own request, whatever the target: what the recall check keeps
    /// and asks the exact answer of. `None` for a write.
    pub fn search_request(&self) -> Option<proto::SearchRequest> {
        let CallKind::Search { query, k } = &self.kind else {
            return None;
        };
        let query = match query {
            Query::Vector(values) => search_request::Query::Vector(proto::Vector {
                values: values.clone(),
            }),
            Query::Text(text) => search_request::Query::Text(text.clone()),
        };
        Some(proto::SearchRequest {
            query: Some(query),
            k: *k,
            ..Default::default()
        })
    }
}

/// A workload: what to send, for every user.
#[derive(Debug, Clone)]
pub struct Workload {
    kind: WorkloadKind,
    seed: u64,
    k: u32,
    data: Synthetic,
    large_text: String,
    /// The `fixed` workload's one query (empty for every other kind).
    fixed: Vec<f32>,
    /// Added to every user number, so the shards of a distributed run send different requests.
    user_offset: u64,
    /// What the requests are rendered from.
    templates: Arc<Templates>,
    /// A dataset's queries, sent by the vector searches instead of drawn ones.
    queries: Option<Queries>,
}

/// Ids of points written by the mixed workload start here, far above any preloaded id.
pub const WRITE_ID_BASE: u64 = 1 << 40;
/// Ids of points written by the durable workload start here, apart from the mixed ones.
pub const DURABLE_ID_BASE: u64 = 1 << 60;

impl Workload {
    /// The data set an ingest workload writes.
    pub fn ingest_truth(&self) -> Option<&Arc<Truth>> {
        match &self.kind {
            WorkloadKind::Ingest { truth, .. } => Some(truth),
            _ => None,
        }
    }

    /// A workload over `dimensions`-wide data seeded by `seed` (the server's `--preload-seed`),
    /// sent to vecrig's own API.
    pub fn new(kind: WorkloadKind, dimensions: usize, seed: u64, k: u32) -> Arc<Self> {
        Self::on(kind, dimensions, seed, k, Templates::vecrig_v1())
    }

    /// As [`new`](Self::new), its requests rendered from `templates` (a templated target).
    pub fn on(
        kind: WorkloadKind,
        dimensions: usize,
        seed: u64,
        k: u32,
        templates: Arc<Templates>,
    ) -> Arc<Self> {
        let large_text = match &kind {
            WorkloadKind::LargeText { bytes } => {
                let unit = "large_test_data ";
                unit.repeat((bytes / unit.len()).max(1))
            }
            _ => String::new(),
        };
        let data = Synthetic::new(dimensions, Synthetic::DEFAULT_CLUSTERS, seed);
        let fixed = match &kind {
            WorkloadKind::FixedVector => first_query(&data, seed),
            _ => Vec::new(),
        };
        Arc::new(Self {
            kind,
            seed,
            k: k.max(1),
            data,
            large_text,
            fixed,
            user_offset: 0,
            templates,
            queries: None,
        })
    }

    /// The same workload, its vector searches sending `queries` (a dataset's) instead of
    /// vectors drawn from the seeded distribution.
    pub fn with_queries(self: &Arc<Self>, queries: Option<Queries>) -> Arc<Self> {
        let mut with = (**self).clone();
        with.queries = queries;
        Arc::new(with)
    }

    /// The same workload with user numbers shifted by `offset` (shard `i` of a distributed run
    /// uses `i * 1_000_000`): same distribution, different requests.
    pub fn offset_users(self: &Arc<Self>, offset: u64) -> Arc<Self> {
        let mut shifted = (**self).clone();
        shifted.user_offset = offset;
        Arc::new(shifted)
    }

    /// The kind of requests.
    pub fn kind(&self) -> &WorkloadKind {
        &self.kind
    }

    /// The template set the requests are rendered from.
    pub fn templates(&self) -> &Arc<Templates> {
        &self.templates
    }

    /// The generator for one user (or worker) of a phase with `concurrency` users.
    pub fn generator(self: &Arc<Self>, user: u64, concurrency: u64) -> Generator {
        let user = user + self.user_offset;
        let stream = self.seed ^ user.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ concurrency << 48;
        Generator {
            workload: Arc::clone(self),
            rng: StdRng::seed_from_u64(stream),
            user,
            concurrency,
        }
    }
}

/// The one query of the `fixed` workload: the first vector query that the distribution of
/// `seed` draws from a generator seeded with `seed` itself. Public so that a comparison with
/// another tool can send the very same request.
pub fn fixed_query(dimensions: usize, seed: u64) -> Vec<f32> {
    first_query(
        &Synthetic::new(dimensions, Synthetic::DEFAULT_CLUSTERS, seed),
        seed,
    )
}

/// The first query `data` draws from a generator seeded with `seed`: [`fixed_query`].
fn first_query(data: &Synthetic, seed: u64) -> Vec<f32> {
    data.query_vector(&mut StdRng::seed_from_u64(seed))
}

/// Produces one user's requests.
#[derive(Debug)]
pub struct Generator {
    workload: Arc<Workload>,
    rng: StdRng,
    user: u64,
    concurrency: u64,
}

impl Generator {
    /// The user's `i`-th request.
    pub fn next(&mut self, i: u64) -> Op {
        // A handle of our own: the arms keep parts of the workload while the generator moves.
        let w = Arc::clone(&self.workload);
        match &w.kind {
            WorkloadKind::Spec(template) => {
                let text = match self.own_text(i) {
                    Some(text) => text,
                    None => template
                        .replace("{user}", &self.user.to_string())
                        .replace("{i}", &i.to_string())
                        .replace("{c}", &self.concurrency.to_string()),
                };
                self.text_search(text, i)
            }
            WorkloadKind::Text => {
                let text = match self.own_text(i) {
                    Some(text) => text,
                    None => w.data.query_text(&mut self.rng),
                };
                self.text_search(text, i)
            }
            WorkloadKind::LargeText { .. } => {
                self.text_search(format!("{}_iteration_{i}", w.large_text), i)
            }
            WorkloadKind::Vector => self.vector_search(false, i),
            WorkloadKind::ExactVector => self.vector_search(true, i),
            WorkloadKind::FixedVector => self.search_for(w.fixed.clone(), false, i),
            WorkloadKind::Mixed {
                upsert_fraction,
                batch,
            } => {
                if self.rng.random_bool(upsert_fraction.clamp(0.0, 1.0)) {
                    self.write(WRITE_ID_BASE, i, *batch, None, 0)
                } else {
                    self.vector_search(false, i)
                }
            }
            WorkloadKind::Durable {
                upsert_fraction,
                batch,
                pad_bytes,
                acks,
            } => {
                if self.rng.random_bool(upsert_fraction.clamp(0.0, 1.0)) {
                    self.write(DURABLE_ID_BASE, i, *batch, Some(acks), *pad_bytes)
                } else {
                    self.vector_search(false, i)
                }
            }
            WorkloadKind::Ingest { truth, writers } => self.ingest(truth, *writers, i),
        }
    }

    /// A request of this user's, rendered by `method` from `points`, framed.
    fn call(
        &self,
        method: &TemplatedMethod,
        points: &[Point<'_>],
        i: u64,
        write: (&str, usize),
    ) -> bytes::Bytes {
        let (stamp, pad) = write;
        method.template.frame(&Fill {
            points,
            user: self.user,
            iteration: i,
            k: self.workload.k,
            stamp,
            pad,
        })
    }

    /// A request id for a search: unique per (user, request).
    fn search_id(&self, i: u64) -> u64 {
        (self.user << 32) | (i & 0xffff_ffff)
    }

    /// A search for `text`, or a vector search where the target has no text search.
    /// The texts file's text for request `i`, if one was given.
    fn own_text(&mut self, i: u64) -> Option<String> {
        let queries = self.workload.queries.as_ref()?;
        queries.text(self.user, self.concurrency, i, &mut self.rng)
    }

    fn text_search(&mut self, text: String, i: u64) -> Op {
        let w = &self.workload;
        let Some(method) = &w.templates.text_search else {
            return self.vector_search(false, i);
        };
        let point = Point {
            id: self.search_id(i),
            vector: &[],
            text: &text,
        };
        let frame = self.call(method, &[point], i, ("", 0));
        self.search_op(frame, Query::Text(text))
    }

    fn vector_search(&mut self, exact: bool, i: u64) -> Op {
        let own = self
            .workload
            .queries
            .as_ref()
            .and_then(|q| q.vector(self.user, self.concurrency, i, &mut self.rng));
        let values = match own {
            Some(values) => values,
            None => self.workload.data.query_vector(&mut self.rng),
        };
        self.search_for(values, exact, i)
    }

    /// A search for the `k` neighbours of `values`, exact (brute force, where the target has
    /// such a search) or approximate. A template that also wants a text is given one.
    fn search_for(&mut self, values: Vec<f32>, exact: bool, i: u64) -> Op {
        let w = &self.workload;
        let method = match (&w.templates.exact_search, exact) {
            (Some(exact), true) => exact,
            _ => &w.templates.search,
        };
        let text = if method.template.uses(crate::dynamic::FieldGenerator::Text) {
            self.workload.data.query_text(&mut self.rng)
        } else {
            String::new()
        };
        let point = Point {
            id: self.search_id(i),
            vector: &values,
            text: &text,
        };
        let frame = self.call(method, &[point], i, ("", 0));
        self.search_op(frame, Query::Vector(values))
    }

    fn search_op(&self, frame: bytes::Bytes, query: Query) -> Op {
        Op::Call(Call {
            frame,
            kind: CallKind::Search {
                query,
                k: self.workload.k,
            },
        })
    }

    /// A batch of new points with ids from `base`, stamped for `acks` when given, each with
    /// `pad` bytes of filler; a search where the target has no write method.
    fn write(
        &mut self,
        base: u64,
        i: u64,
        batch: usize,
        acks: Option<&crate::measure::acks::Acks>,
        pad: usize,
    ) -> Op {
        let w = &self.workload;
        let Some(method) = &w.templates.write else {
            return self.vector_search(false, i);
        };
        let batch = batch.max(1) as u64;
        // Unique per (user, request, point): writers never overwrite each other.
        let ids: Vec<u64> = (0..batch)
            .map(|j| base + (self.user << 24) + ((i * batch + j) & 0xff_ffff))
            .collect();
        let vectors: Vec<Vec<f32>> = ids
            .iter()
            .map(|_| self.workload.data.query_vector(&mut self.rng))
            .collect();
        let points: Vec<Point<'_>> = ids
            .iter()
            .zip(&vectors)
            .map(|(&id, vector)| Point {
                id,
                vector,
                text: "",
            })
            .collect();
        let stamp = acks.map_or("", |a| a.stamp());
        let frame = self.call(method, &points, i, (stamp, pad));
        Op::Call(Call {
            frame,
            kind: CallKind::Write {
                acked: acks.map(|a| (a.clone(), ids)),
            },
        })
    }

    /// The user's next batch of the data set, or `Done` past its end.
    fn ingest(&mut self, truth: &Arc<Truth>, writers: u64, i: u64) -> Op {
        let batch = truth
            .first_batch()
            .saturating_add(self.user)
            .saturating_add(i.saturating_mul(writers.max(1)));
        let w = &self.workload;
        let Some(method) = &w.templates.write else {
            return Op::Done;
        };
        if batch >= truth.batches() as u64 {
            return Op::Done;
        }
        let batch = batch as usize;
        let points: Vec<Point<'_>> = truth
            .batch_range(batch)
            .map(|j| {
                let (id, vector, text) = truth.point(j);
                Point { id, vector, text }
            })
            .collect();
        let frame = self.call(method, &points, i, ("", 0));
        Op::Call(Call {
            frame,
            kind: CallKind::Ingest {
                truth: Arc::clone(truth),
                batch,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_requests() {
        for kind in [
            WorkloadKind::Vector,
            WorkloadKind::Text,
            WorkloadKind::Mixed {
                upsert_fraction: 0.5,
                batch: 2,
            },
        ] {
            let a = Workload::new(kind.clone(), 8, 1, 10);
            let b = Workload::new(kind, 8, 1, 10);
            let (mut ga, mut gb) = (a.generator(3, 10), b.generator(3, 10));
            for i in 0..20 {
                assert_eq!(ga.next(i), gb.next(i));
            }
            assert_ne!(a.generator(4, 10).next(0), a.generator(3, 10).next(0));
        }
    }

    /// The request `op` carries, decoded as vecrig's own.
    fn search(op: &Op) -> proto::SearchRequest {
        use prost::Message;
        let Op::Call(call) = op else {
            panic!("a request expected")
        };
        assert!(!call.is_write(), "a search expected");
        proto::SearchRequest::decode(call.message()).expect("decodes")
    }

    #[test]
    fn the_fixed_workload_sends_one_request_whoever_sends_it() {
        let w = Workload::new(WorkloadKind::FixedVector, 8, 3, 1);
        let first = search(&w.generator(0, 2).next(0));
        let query = Some(search_request::Query::Vector(proto::Vector {
            values: fixed_query(8, 3),
        }));
        assert_eq!((&first.query, first.k), (&query, 1));
        for (user, i) in [(0, 1), (1, 0), (1, 7)] {
            assert_eq!(search(&w.generator(user, 2).next(i)), first);
        }
        assert_ne!(fixed_query(8, 3), fixed_query(8, 4));
    }

    #[test]
    fn spec_and_large_texts_and_exact_searches() {
        let w = Workload::new(WorkloadKind::Spec("u{user}_q{i}_c{c}".into()), 8, 1, 10);
        let r = search(&w.generator(7, 500).next(3));
        assert_eq!(
            r.query,
            Some(search_request::Query::Text("u7_q3_c500".into()))
        );
        let w = Workload::new(WorkloadKind::LargeText { bytes: 160_000 }, 8, 1, 10);
        let op = w.generator(0, 1).next(9);
        let Some(search_request::Query::Text(t)) = search(&op).query else {
            panic!("text expected")
        };
        assert!(t.len() > 150_000 && t.ends_with("_iteration_9"));
        let Op::Call(call) = &op else { unreachable!() };
        assert_eq!(
            call.search_request().and_then(|r| r.query),
            Some(search_request::Query::Text(t))
        );
        let w = Workload::new(WorkloadKind::ExactVector, 8, 1, 10);
        let r = search(&w.generator(0, 1).next(0));
        assert!(
            r.exact
                && matches!(r.query, Some(search_request::Query::Vector(ref v)) if v.values.len() == 8)
        );
    }

    #[test]
    fn mixed_has_the_asked_fraction_of_upserts() {
        let w = Workload::new(
            WorkloadKind::Mixed {
                upsert_fraction: 0.2,
                batch: 4,
            },
            8,
            5,
            10,
        );
        let mut g = w.generator(0, 1);
        let upserts = (0..5000)
            .filter(|&i| matches!(g.next(i), Op::Call(c) if c.is_write()))
            .count();
        assert!((800..1200).contains(&upserts), "{upserts}");
    }

    /// Durable writes carry the run's stamp and their padding in every point's payload, and
    /// keep the ids to record once acknowledged; mixed writes carry neither.
    #[test]
    fn durable_writes_are_stamped_and_padded() {
        use prost::Message;
        let acks = crate::measure::acks::Acks::new("run-1");
        let kind = WorkloadKind::Durable {
            upsert_fraction: 1.0,
            batch: 3,
            pad_bytes: 5,
            acks: acks.clone(),
        };
        let op = Workload::new(kind, 8, 5, 10).generator(2, 4).next(1);
        let Op::Call(call) = op else {
            panic!("a request expected")
        };
        let upsert = proto::UpsertRequest::decode(call.message()).expect("decodes");
        let CallKind::Write {
            acked: Some((to, ids)),
        } = &call.kind
        else {
            panic!("a stamped write expected")
        };
        assert!(*to == acks);
        assert_eq!(upsert.points.iter().map(|p| p.id).collect::<Vec<_>>(), *ids);
        for point in &upsert.points {
            assert!(point.id >= DURABLE_ID_BASE);
            assert_eq!(point.payload[crate::measure::acks::STAMP_KEY], "run-1");
            assert_eq!(point.payload["pad"], "xxxxx");
            assert_eq!(point.payload["writer"], "2");
        }
        let kind = WorkloadKind::Mixed {
            upsert_fraction: 1.0,
            batch: 2,
        };
        let op = Workload::new(kind, 8, 5, 10).generator(2, 4).next(1);
        let Op::Call(call) = op else {
            panic!("a request expected")
        };
        let upsert = proto::UpsertRequest::decode(call.message()).expect("decodes");
        assert_eq!(upsert.points.len(), 2);
        assert!(matches!(call.kind, CallKind::Write { acked: None }));
        assert_eq!(
            upsert.points[0].payload.len(),
            1,
            "{:?}",
            upsert.points[0].payload
        );
    }
}
