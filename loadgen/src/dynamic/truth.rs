//! Ground truth of our own: the seeded data set an `ingest` phase writes, which of its batches
//! the target acknowledged, and the exact answer to a query over them, so recall@k can be
//! computed by the loadgen for any target.
//!
//! The points are the server's `--preload` distribution ([`Synthetic::point`]), ids
//! `first_id..first_id + points`. Only acknowledged batches count as held: a batch the target
//! refused is not in the exact answer (a batch that failed late yet was applied would count
//! against recall; the report's outcomes show such failures). The exact scan is plain f32
//! arithmetic over the vectors kept here (`points x dimensions x 4` bytes), run after a
//! phase, off the request path, for at most the phase's recall samples.
//!
//! From a dataset file ([`Truth::from_dataset`]) the points are the file's train set instead,
//! and where the file has ground-truth neighbours, a search for one of its queries is judged
//! against them (truncated to k) rather than a scan: the dataset's own truth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use vecrig::dataset::{Batch, Dataset, Matrix};
use vecrig::synthetic::Synthetic;

/// How the target ranks neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity, highest first.
    #[default]
    Cosine,
    /// Euclidean distance, nearest first.
    L2,
    /// Inner product, highest first.
    Ip,
}

/// The data set written by ingest, and what of it the target acknowledged.
#[derive(Debug)]
pub struct Truth {
    dimensions: usize,
    first_id: u64,
    batch: usize,
    metric: Metric,
    vectors: Vec<f32>,
    texts: Vec<String>,
    acked: Vec<AtomicBool>,
    /// Whether the probe wrote batch 0.
    probed: AtomicBool,
    /// A dataset file's own neighbours of its queries.
    answers: Option<Answers>,
}

/// A dataset file's ground truth: the row of each query, found by its bits, and the
/// neighbours of each row, nearest first.
#[derive(Debug)]
struct Answers {
    rows: HashMap<Vec<u32>, usize>,
    neighbors: Matrix<i64>,
}

impl Answers {
    fn of(dataset: &Dataset) -> Option<Self> {
        let (queries, neighbors) = (dataset.queries.as_ref()?, dataset.neighbors.as_ref()?);
        let rows = (0..queries.rows())
            .map(|i| (queries.row(i).iter().map(|v| v.to_bits()).collect(), i))
            .collect();
        Some(Self {
            rows,
            neighbors: neighbors.clone(),
        })
    }

    fn of_query(&self, query: &[f32], k: usize) -> Option<&[i64]> {
        let bits: Vec<u32> = query.iter().map(|v| v.to_bits()).collect();
        let row = self.neighbors.row(*self.rows.get(&bits)?);
        Some(&row[..k.min(row.len())])
    }
}

/// A run's data set is one `Truth`, shared: equal when the same.
impl PartialEq for Truth {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Truth {
    /// `points` seeded points of `dimensions`, written in batches of `batch`, ids from
    /// `first_id`.
    pub fn new(
        dimensions: usize,
        seed: u64,
        points: usize,
        batch: usize,
        first_id: u64,
        metric: Metric,
    ) -> Self {
        let data = Synthetic::new(dimensions, Synthetic::DEFAULT_CLUSTERS, seed);
        let mut vectors = Vec::with_capacity(points * dimensions);
        let mut texts = Vec::with_capacity(points);
        for j in 0..points as u64 {
            let point = data.point(j);
            vectors.extend_from_slice(&point.vector);
            texts.push(point.text);
        }
        let batch = batch.max(1);
        Self {
            dimensions,
            first_id,
            batch,
            metric,
            vectors,
            texts,
            acked: (0..points.div_ceil(batch))
                .map(|_| AtomicBool::new(false))
                .collect(),
            probed: AtomicBool::new(false),
            answers: None,
        }
    }

    /// The train points of `dataset` (its first `limit`, when given), written in batches of
    /// `batch`, ids from `first_id` on in the file's order; searches for the file's queries are
    /// judged against its neighbours when it has them and every point is written.
    pub fn from_dataset(
        dataset: &Dataset,
        limit: Option<usize>,
        batch: usize,
        first_id: u64,
        metric: Metric,
    ) -> Result<Self, vecrig::dataset::Error> {
        let dimensions = dataset.dimensions();
        let points = limit.map_or(dataset.points(), |l| (l as u64).min(dataset.points())) as usize;
        let mut vectors = Vec::with_capacity(points * dimensions);
        if let Some(mut reader) = dataset.read_points()? {
            let mut read = Batch::default();
            while vectors.len() < points * dimensions {
                reader.next_batch(4096.min(points - vectors.len() / dimensions), &mut read)?;
                if read.is_empty() {
                    break;
                }
                vectors.extend_from_slice(&read.vectors);
            }
        }
        let points = vectors.len() / dimensions.max(1);
        let batch = batch.max(1);
        Ok(Self {
            dimensions,
            first_id,
            batch,
            metric,
            vectors,
            texts: vec![String::new(); points],
            acked: (0..points.div_ceil(batch))
                .map(|_| AtomicBool::new(false))
                .collect(),
            probed: AtomicBool::new(false),
            answers: if points as u64 == dataset.points() {
                Answers::of(dataset)
            } else {
                None
            },
        })
    }

    /// Only the neighbours of `dataset`'s queries, for a target that holds its points already
    /// (`vecrig-server --preload-from`), ids from `first_id` on; `None` without neighbours.
    pub fn answers_of(dataset: &Dataset, first_id: u64) -> Option<Self> {
        Some(Self {
            dimensions: dataset.dimensions(),
            first_id,
            batch: 1,
            metric: Metric::default(),
            vectors: Vec::new(),
            texts: Vec::new(),
            acked: Vec::new(),
            probed: AtomicBool::new(false),
            answers: Some(Answers::of(dataset)?),
        })
    }

    /// Points in the data set.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether the data set is empty.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Batches the data set is written in.
    pub fn batches(&self) -> usize {
        self.acked.len()
    }

    /// Point indexes of batch `b`.
    pub fn batch_range(&self, b: usize) -> std::ops::Range<usize> {
        let start = (b * self.batch).min(self.len());
        start..(start + self.batch).min(self.len())
    }

    /// Point `j`: id, vector, text.
    pub fn point(&self, j: usize) -> (u64, &[f32], &str) {
        let d = self.dimensions;
        (
            self.first_id + j as u64,
            &self.vectors[j * d..(j + 1) * d],
            &self.texts[j],
        )
    }

    /// Marks batch 0 written by the pre-flight probe: ingest then starts at batch 1, so the
    /// target is never sent the same points twice (a store that keeps duplicate keys would
    /// hold them twice).
    pub fn acknowledge_probe(&self) {
        self.acknowledge(0);
        self.probed.store(true, Ordering::Release);
    }

    /// The first batch ingest writes: 1 when the probe wrote batch 0, else 0.
    pub fn first_batch(&self) -> u64 {
        u64::from(self.probed.load(Ordering::Acquire))
    }

    /// Marks batch `b` acknowledged by the target.
    pub fn acknowledge(&self, b: usize) {
        if let Some(flag) = self.acked.get(b) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Points the target acknowledged.
    pub fn held(&self) -> usize {
        (0..self.batches())
            .filter(|&b| self.acked[b].load(Ordering::Acquire))
            .map(|b| self.batch_range(b).len())
            .sum()
    }

    /// The ids of the `k` acknowledged points nearest `query` by the metric, nearest first.
    pub fn exact(&self, query: &[f32], k: usize) -> Vec<u64> {
        if query.len() != self.dimensions || k == 0 {
            return Vec::new();
        }
        if let Some(ids) = self.answers.as_ref().and_then(|a| a.of_query(query, k)) {
            return ids
                .iter()
                .map(|&id| self.first_id + id.max(0) as u64)
                .collect();
        }
        let query_norm = dot(query, query).sqrt();
        // (distance: smaller is nearer, id); a bounded sorted list, k is small.
        let mut best: Vec<(f32, u64)> = Vec::with_capacity(k + 1);
        for b in 0..self.batches() {
            if !self.acked[b].load(Ordering::Acquire) {
                continue;
            }
            for j in self.batch_range(b) {
                let (id, vector, _) = self.point(j);
                let distance = match self.metric {
                    Metric::L2 => vector
                        .iter()
                        .zip(query)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>(),
                    Metric::Ip => -dot(vector, query),
                    Metric::Cosine => {
                        let norm = dot(vector, vector).sqrt() * query_norm;
                        if norm == 0.0 {
                            1.0
                        } else {
                            1.0 - dot(vector, query) / norm
                        }
                    }
                };
                if best.len() == k && best.last().is_some_and(|&(d, _)| distance >= d) {
                    continue;
                }
                let at = best.partition_point(|&(d, _)| d <= distance);
                best.insert(at, (distance, id));
                best.truncate(k);
            }
        }
        best.into_iter().map(|(_, id)| id).collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_answers_only_acknowledged_points_nearest_first() {
        let truth = Truth::new(8, 3, 10, 4, 100, Metric::L2);
        assert_eq!(truth.batches(), 3);
        assert_eq!(truth.batch_range(2), 8..10);
        assert!(truth.exact(truth.point(0).1, 3).is_empty());
        truth.acknowledge(0);
        truth.acknowledge(2);
        assert_eq!(truth.held(), 6);
        let query = truth.point(9).1.to_vec();
        let answer = truth.exact(&query, 3);
        assert_eq!(answer.len(), 3);
        assert_eq!(answer[0], 109, "a point is its own nearest");
        assert!(
            answer.iter().all(|id| !(104..108).contains(id)),
            "{answer:?}"
        );
        assert!(
            truth.exact(&query[..4], 3).is_empty(),
            "a query of another width"
        );
        let cosine = Truth::new(8, 3, 10, 4, 0, Metric::Cosine);
        (0..3).for_each(|b| cosine.acknowledge(b));
        let scaled: Vec<f32> = cosine.point(5).1.iter().map(|x| x * 3.0).collect();
        assert_eq!(cosine.exact(&scaled, 1), [5]);
    }
}
