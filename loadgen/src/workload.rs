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
//! - templated: searches rendered from a templated target's request template
//!   ([`crate::dynamic`]), vectors and texts from the same distribution;
//! - ingest: the seeded data set of [`crate::dynamic::Truth`], batch by batch, through the
//!   templated target's write method;
//! - durable (fault runs only): as mixed, but every upserted point is stamped and its
//!   acknowledgement recorded, so it can be read back after a fault ([`crate::acks`]).

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vecrig::proto::{self, point, search_request};
use vecrig::synthetic::Synthetic;

use crate::dynamic::{Fill, Generator as Fills, Point, Templates, Truth};

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
        acks: crate::acks::Acks,
    },
    /// Searches rendered from a templated target's search template.
    Templated(Arc<Templates>),
    /// The data set of `truth` written through the templated target's write method, batch
    /// `user + i * writers` by user `user` at its `i`-th request.
    Ingest {
        /// The target's templates.
        templates: Arc<Templates>,
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
    /// A search.
    Search(proto::SearchRequest),
    /// An upsert.
    Upsert(proto::UpsertRequest),
    /// An upsert whose acknowledgement is recorded (its points are read back after a fault).
    Durable(proto::UpsertRequest, crate::acks::Acks),
    /// A request to a templated target.
    Call(Box<Call>),
    /// Nothing left to send: the user is done (ingest, once the data set is written).
    Done,
}

/// A request to a templated target, encoded (not yet framed).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The request message's bytes.
    pub body: Vec<u8>,
    /// What it is.
    pub kind: CallKind,
}

/// What a templated request is, as far as the run cares.
#[derive(Debug, Clone, PartialEq)]
pub enum CallKind {
    /// A search for `query`'s `k` neighbours; the templates read its answer's ids.
    Search {
        /// The query vector (for the recall check).
        query: Vec<f32>,
        /// Neighbours asked for.
        k: u32,
        /// Where the answer's ids are.
        templates: Arc<Templates>,
    },
    /// Batch `batch` of the data set of `truth`, acknowledged there when answered OK.
    Ingest {
        /// The data set.
        truth: Arc<Truth>,
        /// The batch.
        batch: usize,
    },
}

impl Call {
    /// Whether it writes (else it searches).
    pub fn is_write(&self) -> bool {
        matches!(self.kind, CallKind::Ingest { .. })
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
}

/// Ids of points written by the mixed workload start here, far above any preloaded id.
pub const WRITE_ID_BASE: u64 = 1 << 40;
/// Ids of points written by the durable workload start here, apart from the mixed ones.
pub const DURABLE_ID_BASE: u64 = 1 << 60;

impl Workload {
    /// A workload over `dimensions`-wide data seeded by `seed` (the server's `--preload-seed`).
    pub fn new(kind: WorkloadKind, dimensions: usize, seed: u64, k: u32) -> Arc<Self> {
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
        })
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
        // A handle of our own: the durable arm keeps `acks` while building its upsert.
        let w = Arc::clone(&self.workload);
        let text = |t: String| {
            Op::Search(proto::SearchRequest {
                query: Some(search_request::Query::Text(t)),
                k: w.k,
                ..Default::default()
            })
        };
        match &w.kind {
            WorkloadKind::Spec(template) => text(
                template
                    .replace("{user}", &self.user.to_string())
                    .replace("{i}", &i.to_string())
                    .replace("{c}", &self.concurrency.to_string()),
            ),
            WorkloadKind::Text => text(w.data.query_text(&mut self.rng)),
            WorkloadKind::LargeText { .. } => text(format!("{}_iteration_{i}", w.large_text)),
            WorkloadKind::Vector => self.vector_search(false),
            WorkloadKind::ExactVector => self.vector_search(true),
            WorkloadKind::FixedVector => self.search_for(w.fixed.clone(), false),
            WorkloadKind::Mixed {
                upsert_fraction,
                batch,
            } => {
                if self.rng.random_bool(upsert_fraction.clamp(0.0, 1.0)) {
                    Op::Upsert(self.upsert(WRITE_ID_BASE, i, *batch, &[]))
                } else {
                    self.vector_search(false)
                }
            }
            WorkloadKind::Durable {
                upsert_fraction,
                batch,
                pad_bytes,
                acks,
            } => {
                if self.rng.random_bool(upsert_fraction.clamp(0.0, 1.0)) {
                    let extra = [
                        (crate::acks::STAMP_KEY, acks.stamp().to_string()),
                        ("pad", "x".repeat(*pad_bytes)),
                    ];
                    let extra = if *pad_bytes == 0 {
                        &extra[..1]
                    } else {
                        &extra[..]
                    };
                    Op::Durable(self.upsert(DURABLE_ID_BASE, i, *batch, extra), acks.clone())
                } else {
                    self.vector_search(false)
                }
            }
            WorkloadKind::Templated(templates) => self.templated_search(templates, i),
            WorkloadKind::Ingest {
                templates,
                truth,
                writers,
            } => self.ingest(templates, truth, *writers, i),
        }
    }

    /// A search rendered from the templated target's template.
    fn templated_search(&mut self, templates: &Arc<Templates>, i: u64) -> Op {
        let query = self.workload.data.query_vector(&mut self.rng);
        let template = &templates.search.template;
        let text = if template.uses(Fills::Text) {
            self.workload.data.query_text(&mut self.rng)
        } else {
            String::new()
        };
        let point = Point {
            // A request id: unique per (user, request).
            id: (self.user << 32) | (i & 0xffff_ffff),
            vector: &query,
            text: &text,
        };
        let body = template.encode(&Fill {
            points: &[point],
            user: self.user,
            iteration: i,
            k: self.workload.k,
        });
        Op::Call(Box::new(Call {
            body,
            kind: CallKind::Search {
                query,
                k: self.workload.k,
                templates: Arc::clone(templates),
            },
        }))
    }

    /// The user's next batch of the data set, or `Done` past its end.
    fn ingest(&mut self, templates: &Templates, truth: &Arc<Truth>, writers: u64, i: u64) -> Op {
        let batch = self.user.saturating_add(i.saturating_mul(writers.max(1)));
        let Some(write) = &templates.write else {
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
        let body = write.template.encode(&Fill {
            points: &points,
            user: self.user,
            iteration: i,
            k: self.workload.k,
        });
        Op::Call(Box::new(Call {
            body,
            kind: CallKind::Ingest {
                truth: Arc::clone(truth),
                batch,
            },
        }))
    }

    fn vector_search(&mut self, exact: bool) -> Op {
        let values = self.workload.data.query_vector(&mut self.rng);
        self.search_for(values, exact)
    }

    /// A search for the `k` neighbours of `values`, exact (brute force) or approximate.
    fn search_for(&self, values: Vec<f32>, exact: bool) -> Op {
        Op::Search(proto::SearchRequest {
            query: Some(search_request::Query::Vector(proto::Vector { values })),
            k: self.workload.k,
            exact,
            ..Default::default()
        })
    }

    /// A batch of new points with ids from `base`, each with `extra` payload entries.
    fn upsert(
        &mut self,
        base: u64,
        i: u64,
        batch: usize,
        extra: &[(&str, String)],
    ) -> proto::UpsertRequest {
        let points = (0..batch.max(1) as u64)
            .map(|j| {
                // Unique per (user, request, point): writers never overwrite each other.
                let id = base + (self.user << 24) + ((i * batch as u64 + j) & 0xff_ffff);
                let mut payload = HashMap::from([("writer".to_string(), self.user.to_string())]);
                payload.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
                proto::Point {
                    id,
                    data: Some(point::Data::Vector(proto::Vector {
                        values: self.workload.data.query_vector(&mut self.rng),
                    })),
                    payload,
                }
            })
            .collect();
        proto::UpsertRequest {
            points,
            wait: false,
        }
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

    #[test]
    fn the_fixed_workload_sends_one_request_whoever_sends_it() {
        let w = Workload::new(WorkloadKind::FixedVector, 8, 3, 1);
        let first = w.generator(0, 2).next(0);
        let Op::Search(request) = &first else {
            panic!("search expected")
        };
        let query = Some(search_request::Query::Vector(proto::Vector {
            values: fixed_query(8, 3),
        }));
        assert_eq!((&request.query, request.k), (&query, 1));
        for (user, i) in [(0, 1), (1, 0), (1, 7)] {
            assert_eq!(w.generator(user, 2).next(i), first);
        }
        assert_ne!(fixed_query(8, 3), fixed_query(8, 4));
    }

    #[test]
    fn spec_and_large_texts() {
        let w = Workload::new(WorkloadKind::Spec("u{user}_q{i}_c{c}".into()), 8, 1, 10);
        let Op::Search(r) = w.generator(7, 500).next(3) else {
            panic!("search expected")
        };
        assert_eq!(
            r.query,
            Some(search_request::Query::Text("u7_q3_c500".into()))
        );
        let w = Workload::new(WorkloadKind::LargeText { bytes: 160_000 }, 8, 1, 10);
        let Op::Search(r) = w.generator(0, 1).next(9) else {
            panic!("search expected")
        };
        let Some(search_request::Query::Text(t)) = r.query else {
            panic!("text expected")
        };
        assert!(t.len() > 150_000 && t.ends_with("_iteration_9"));
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
            .filter(|&i| matches!(g.next(i), Op::Upsert(_)))
            .count();
        assert!((800..1200).contains(&upserts), "{upserts}");
    }
}
