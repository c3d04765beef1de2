//! The seeded synthetic data set that a server preloads (`--preload N`) and a loadgen queries.
//!
//! Each point is a short text made of its cluster's topic words and common words, and its vector
//! is the embedding of that text ([`crate::embed::HashingEmbedder`], the server's own) plus a
//! little seeded jitter. So the data is clustered, as real embeddings are (texts of one
//! cluster share topic words, so their embeddings lie near each other, and an ANN index
//! behaves very differently on clustered data than on uniform noise), and text queries,
//! vector queries and preloaded points live in one space: a text query lands among the points
//! whose texts share its words, and a vector query is the embedding of a query text.
//!
//! Everything is a pure function of `(seed, id)`: the loadgen can draw queries from the same
//! distribution without ever seeing the server's data.

use crate::embed::{Feature, HashingEmbedder, WordFeatures};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::sync::{Arc, OnceLock};

/// Common words that appear in every cluster's texts.
const COMMON_WORDS: &[&str] = &[
    "vector",
    "search",
    "index",
    "query",
    "latency",
    "cluster",
    "nearest",
    "neighbor",
    "shard",
    "replica",
    "graph",
    "layer",
    "memory",
    "disk",
    "batch",
    "stream",
    "server",
    "client",
    "request",
    "answer",
    "score",
    "metric",
    "distance",
    "recall",
    "throughput",
    "load",
    "stress",
    "budget",
    "deadline",
    "queue",
];

/// Syllables that topic words are built from, so every cluster has its own vocabulary.
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "ta", "vo", "xi", "ze", "pa", "qu", "sy", "bo", "da", "fe", "gi",
];

/// Topic words per cluster.
const TOPIC_WORDS: usize = 6;

/// One synthetic point.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticPoint {
    /// Its id (the index it was drawn with).
    pub id: u64,
    /// Its vector, `dimensions` finite values.
    pub vector: Vec<f32>,
    /// A short text in its cluster's vocabulary.
    pub text: String,
    /// The cluster it was drawn around.
    pub cluster: usize,
}

/// The distribution: clusters (each a topic vocabulary) and jitter, fixed by a seed.
#[derive(Debug, Clone)]
pub struct Synthetic {
    dimensions: usize,
    seed: u64,
    clusters: usize,
    embedder: HashingEmbedder,
    /// Standard deviation of the jitter per coordinate: [`JITTER`] over the whole vector.
    jitter: f32,
    /// Each cluster's topic words with their features hashed, drawn on first use and kept,
    /// and the common words': every query takes four topic words and four common words.
    /// Drawing the six topic words again for each query (a seeded generator, six strings),
    /// joining a text and hashing its ~60 features was a fifth of the loadgen's CPU per
    /// vector search. Shared by clones.
    topics: Arc<[OnceLock<Topic>]>,
    common: Arc<OnceLock<Common>>,
}

/// A cluster's topic words, with every feature a text of the cluster can have from them
/// hashed once.
#[derive(Debug)]
struct Topic {
    words: Vec<(String, WordFeatures)>,
    /// `pairs[a * n + b]`: topic word `a` followed by topic word `b` (`n` topic words).
    pairs: Vec<Feature>,
    /// `then_common[a * COMMON_WORDS.len() + c]`: topic word `a` followed by common word `c`.
    then_common: Vec<Feature>,
}

/// The common words' features and their pairs' (`pairs[a * COMMON_WORDS.len() + b]`).
#[derive(Debug)]
struct Common {
    words: Vec<WordFeatures>,
    pairs: Vec<Feature>,
}

/// Length of the jitter added to a text's (unit) embedding. Small next to the distance between
/// texts that differ by one word, so neighbours are still decided by words, but enough that
/// points with the same text are distinct vectors (an index should not see exact duplicates).
const JITTER: f32 = 0.05;

impl Synthetic {
    /// Default number of clusters.
    pub const DEFAULT_CLUSTERS: usize = 64;
    /// Default seed, shared by the server's `--preload` and the loadgen's queries.
    pub const DEFAULT_SEED: u64 = 42;

    /// The distribution of `dimensions`-wide vectors around `clusters` centres.
    pub fn new(dimensions: usize, clusters: usize, seed: u64) -> Self {
        Self {
            dimensions,
            seed,
            clusters: clusters.max(1),
            embedder: HashingEmbedder::new(dimensions),
            jitter: JITTER / (dimensions.max(1) as f32).sqrt(),
            topics: (0..clusters.max(1)).map(|_| OnceLock::new()).collect(),
            common: Arc::default(),
        }
    }

    /// Vector width.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Number of clusters.
    pub fn clusters(&self) -> usize {
        self.clusters
    }

    /// The point with this id: the same for the same seed, on any machine.
    pub fn point(&self, id: u64) -> SyntheticPoint {
        let mut rng = self.rng_for(id, 0x5eed_0001);
        let cluster = rng.random_range(0..self.clusters);
        let words = self.words(cluster, &mut rng);
        let text = words.text();
        let vector = self.jittered(words.embedding(&self.embedder), &mut rng);
        SyntheticPoint {
            id,
            vector,
            text,
            cluster,
        }
    }

    /// A query vector from the same distribution as the points (not equal to any of them):
    /// the jittered embedding of a query text.
    pub fn query_vector(&self, rng: &mut impl Rng) -> Vec<f32> {
        let cluster = rng.random_range(0..self.clusters);
        let words = self.words(cluster, rng);
        self.jittered(words.embedding(&self.embedder), rng)
    }

    /// A query text in the vocabulary of a random cluster.
    pub fn query_text(&self, rng: &mut impl Rng) -> String {
        let cluster = rng.random_range(0..self.clusters);
        self.words(cluster, rng).text()
    }

    fn rng_for(&self, id: u64, stream: u64) -> StdRng {
        // Mix seed, id and stream so neighbouring ids do not get correlated generators.
        let mut x = self.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        StdRng::seed_from_u64(x ^ (x >> 31))
    }

    /// A text's embedding `v` with jitter added, normalised again: a unit vector, as the
    /// server's embedded texts are.
    fn jittered(&self, mut v: Vec<f32>, rng: &mut impl Rng) -> Vec<f32> {
        let noise = Normal::new(0.0f32, self.jitter.max(f32::MIN_POSITIVE))
            .expect("jitter is positive and finite");
        for x in &mut v {
            *x += noise.sample(rng);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for x in &mut v {
                *x /= norm;
            }
        }
        v
    }

    /// The topic words of one cluster, derived from the cluster number alone.
    pub fn topic_words(&self, cluster: usize) -> Vec<String> {
        let mut rng = self.rng_for(cluster as u64, 0x70b1_c000);
        (0..TOPIC_WORDS)
            .map(|_| {
                let syllables = rng.random_range(2..=3);
                (0..syllables)
                    .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                    .collect::<String>()
            })
            .collect()
    }

    /// A text's words: four of the cluster's topic words and four common words, drawn in
    /// that order.
    fn words(&self, cluster: usize, rng: &mut impl Rng) -> Words<'_> {
        let topic = self.topics[cluster % self.topics.len()].get_or_init(|| {
            let words: Vec<(String, WordFeatures)> = (self.topic_words(cluster).into_iter())
                .map(|word| {
                    let features = self.embedder.word_features(&word);
                    (word, features)
                })
                .collect();
            let pair = |(a, _): &(String, _), b: &str| self.embedder.pair_feature(a, b);
            Topic {
                pairs: (words.iter())
                    .flat_map(|a| words.iter().map(move |(b, _)| pair(a, b)))
                    .collect(),
                then_common: (words.iter())
                    .flat_map(|a| COMMON_WORDS.iter().map(move |b| pair(a, b)))
                    .collect(),
                words,
            }
        });
        let common = self.common.get_or_init(|| Common {
            words: (COMMON_WORDS.iter())
                .map(|word| self.embedder.word_features(word))
                .collect(),
            pairs: (COMMON_WORDS.iter())
                .flat_map(|a| {
                    COMMON_WORDS
                        .iter()
                        .map(|b| self.embedder.pair_feature(a, b))
                })
                .collect(),
        });
        Words {
            topic,
            common,
            topics: std::array::from_fn(|_| rng.random_range(0..topic.words.len())),
            commons: std::array::from_fn(|_| rng.random_range(0..COMMON_WORDS.len())),
        }
    }
}

/// A text as drawn: which topic words, then which common words.
struct Words<'a> {
    topic: &'a Topic,
    common: &'a Common,
    topics: [usize; 4],
    commons: [usize; 4],
}

impl Words<'_> {
    /// The words joined by spaces.
    fn text(&self) -> String {
        let topics = self.topics.iter().map(|&t| self.topic.words[t].0.as_str());
        let commons = self.commons.iter().map(|&c| COMMON_WORDS[c]);
        let mut text = String::with_capacity(64);
        for (i, word) in topics.chain(commons).enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(word);
        }
        text
    }

    /// The text's embedding from the cached features: its words' and its seven pairs'.
    fn embedding(&self, embedder: &HashingEmbedder) -> Vec<f32> {
        let (topic, common, n, m) = (
            self.topic,
            self.common,
            self.topic.words.len(),
            COMMON_WORDS.len(),
        );
        let [t0, t1, t2, t3] = self.topics;
        let [c0, c1, c2, c3] = self.commons;
        let words = (self.topics.iter().map(|&t| &topic.words[t].1))
            .chain(self.commons.iter().map(|&c| &common.words[c]));
        let pairs = [
            &topic.pairs[t0 * n + t1],
            &topic.pairs[t1 * n + t2],
            &topic.pairs[t2 * n + t3],
            &topic.then_common[t3 * m + c0],
            &common.pairs[c0 * m + c1],
            &common.pairs[c1 * m + c2],
            &common.pairs[c2 * m + c3],
        ];
        embedder.embed_features(words, pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_points() {
        let a = Synthetic::new(16, 8, 7);
        let b = Synthetic::new(16, 8, 7);
        for id in [0, 1, 99, u64::MAX] {
            assert_eq!(a.point(id), b.point(id));
        }
        assert_ne!(a.point(1).vector, a.point(2).vector);
        let c = Synthetic::new(16, 8, 8);
        assert_ne!(a.point(1).vector, c.point(1).vector);
    }

    #[test]
    fn texts_points_and_vectors_as_first_drawn() {
        // The text as first written: the topic words drawn afresh, eight strings joined.
        fn first_written(s: &Synthetic, cluster: usize, rng: &mut impl Rng) -> String {
            let topic = s.topic_words(cluster);
            let mut words = Vec::new();
            for _ in 0..4 {
                words.push(topic[rng.random_range(0..topic.len())].clone());
            }
            for _ in 0..4 {
                words.push(COMMON_WORDS[rng.random_range(0..COMMON_WORDS.len())].to_string());
            }
            words.join(" ")
        }
        // The vector as first written: the jittered embedding of the whole text.
        fn first_vector(s: &Synthetic, text: &str, rng: &mut impl Rng) -> Vec<f32> {
            use crate::embed::Embedder;
            s.jittered(s.embedder.embed(text), rng)
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (dimensions, clusters) in [(16, 8), (32, 64), (128, 3)] {
            let s = Synthetic::new(dimensions, clusters, 7);
            let (mut a, mut b) = (StdRng::seed_from_u64(3), StdRng::seed_from_u64(3));
            for _ in 0..300 {
                assert_eq!(s.query_text(&mut a), {
                    let cluster = b.random_range(0..clusters);
                    first_written(&s, cluster, &mut b)
                });
                let now = s.query_vector(&mut a);
                let cluster = b.random_range(0..clusters);
                let text = first_written(&s, cluster, &mut b);
                assert_eq!(bits(&now), bits(&first_vector(&s, &text, &mut b)));
            }
            for id in 0..300 {
                let point = s.point(id);
                let mut rng = s.rng_for(id, 0x5eed_0001);
                let cluster = rng.random_range(0..clusters);
                let text = first_written(&s, cluster, &mut rng);
                assert_eq!(point.text, text);
                assert_eq!(
                    bits(&point.vector),
                    bits(&first_vector(&s, &text, &mut rng))
                );
            }
        }
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn points_are_the_embeddings_of_their_texts_and_cluster() {
        use crate::embed::Embedder;
        let s = Synthetic::new(128, 16, 3);
        let embedder = HashingEmbedder::new(128);
        let points: Vec<_> = (0..400).map(|id| s.point(id)).collect();
        for p in &points {
            // The text's embedding, moved only by the jitter.
            let c = dot(&p.vector, &embedder.embed(&p.text));
            assert!(c > 0.99, "cosine to its text's embedding {c}");
        }
        // Clustered: a point is nearer, on average, to its own cluster's points than to others'.
        let (mut same, mut other) = ((0.0, 0u32), (0.0, 0u32));
        for a in &points[..100] {
            for b in &points[100..] {
                let t = if a.cluster == b.cluster {
                    &mut same
                } else {
                    &mut other
                };
                t.0 += dot(&a.vector, &b.vector);
                t.1 += 1;
            }
        }
        let (same, other) = (same.0 / same.1 as f32, other.0 / other.1 as f32);
        assert!(
            same > other + 0.2,
            "mean cosine {same} within clusters, {other} across"
        );
    }

    #[test]
    fn points_are_finite_and_sized() {
        let s = Synthetic::new(32, 4, 1);
        for id in 0..100 {
            let p = s.point(id);
            assert_eq!(p.vector.len(), 32);
            assert!(p.vector.iter().all(|v| v.is_finite()));
            assert!(p.cluster < 4);
            assert_eq!(p.text.split(' ').count(), 8);
        }
    }
}
