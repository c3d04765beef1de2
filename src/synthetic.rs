//! The seeded synthetic data set that a server preloads (`--preload N`) and a loadgen queries.
//!
//! Points are drawn around `clusters` Gaussian centres, because real embeddings are clustered
//! and an ANN index behaves very differently on clustered data than on uniform noise. Each point
//! also gets a short text made of its cluster's topic words and common words, so text queries
//! have something to find. Everything is a pure function of `(seed, id)`: the loadgen can draw
//! queries from the same distribution without ever seeing the server's data.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

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

/// The distribution: cluster centres and spread, fixed by a seed.
#[derive(Debug, Clone)]
pub struct Synthetic {
    dimensions: usize,
    seed: u64,
    centres: Vec<Vec<f32>>,
    spread: f32,
}

impl Synthetic {
    /// Default number of clusters.
    pub const DEFAULT_CLUSTERS: usize = 64;
    /// Default seed, shared by the server's `--preload` and the loadgen's queries.
    pub const DEFAULT_SEED: u64 = 42;

    /// The distribution of `dimensions`-wide vectors around `clusters` centres.
    pub fn new(dimensions: usize, clusters: usize, seed: u64) -> Self {
        let clusters = clusters.max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        let unit = Normal::new(0.0f32, 1.0).expect("unit normal is valid");
        let centres = (0..clusters)
            .map(|_| (0..dimensions).map(|_| unit.sample(&mut rng)).collect())
            .collect();
        Self {
            dimensions,
            seed,
            centres,
            spread: 0.35,
        }
    }

    /// Vector width.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Number of clusters.
    pub fn clusters(&self) -> usize {
        self.centres.len()
    }

    /// The point with this id: the same for the same seed, on any machine.
    pub fn point(&self, id: u64) -> SyntheticPoint {
        let mut rng = self.rng_for(id, 0x5eed_0001);
        let cluster = rng.random_range(0..self.centres.len());
        let vector = self.around(cluster, &mut rng);
        let text = self.text(cluster, &mut rng);
        SyntheticPoint {
            id,
            vector,
            text,
            cluster,
        }
    }

    /// A query vector from the same distribution as the points (not equal to any of them).
    pub fn query_vector(&self, rng: &mut impl Rng) -> Vec<f32> {
        let cluster = rng.random_range(0..self.centres.len());
        self.around(cluster, rng)
    }

    /// A query text in the vocabulary of a random cluster.
    pub fn query_text(&self, rng: &mut impl Rng) -> String {
        let cluster = rng.random_range(0..self.centres.len());
        self.text(cluster, rng)
    }

    fn rng_for(&self, id: u64, stream: u64) -> StdRng {
        // Mix seed, id and stream so neighbouring ids do not get correlated generators.
        let mut x = self.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        StdRng::seed_from_u64(x ^ (x >> 31))
    }

    fn around(&self, cluster: usize, rng: &mut impl Rng) -> Vec<f32> {
        let noise = Normal::new(0.0f32, self.spread).expect("spread is positive");
        self.centres[cluster]
            .iter()
            .map(|c| c + noise.sample(rng))
            .collect()
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

    fn text(&self, cluster: usize, rng: &mut impl Rng) -> String {
        let topic = self.topic_words(cluster);
        let mut words = Vec::with_capacity(8);
        for _ in 0..4 {
            words.push(topic[rng.random_range(0..topic.len())].clone());
        }
        for _ in 0..4 {
            words.push(COMMON_WORDS[rng.random_range(0..COMMON_WORDS.len())].to_string());
        }
        words.join(" ")
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
