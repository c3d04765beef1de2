//! Turning text into vectors, the same way on both sides of the wire: the server embeds text
//! queries and text points with it, and [`crate::synthetic`] builds its points and vector
//! queries from the embeddings of their texts, so text and vector workloads search one space.
//!
//! [`HashingEmbedder`] is a deterministic feature-hashing embedder: every word, every pair of
//! adjacent words and every character trigram of each word is hashed to one of the `dimensions`
//! coordinates with a hashed sign, and the sum is L2-normalised. It needs no model files, costs
//! microseconds for a sentence, gives the same vector on every machine for the same text, and
//! places texts that share words near each other, which is what a load rig needs from it.
//! A learned model can replace it behind the [`Embedder`] trait.

/// Something that turns text into a `dimensions`-wide vector.
pub trait Embedder: Send + Sync {
    /// The width of the vectors produced.
    fn dimensions(&self) -> usize;
    /// Embeds `text`. The result has `dimensions()` finite values.
    fn embed(&self, text: &str) -> Vec<f32>;
}

/// Feature-hashing embedder over word unigrams, word bigrams and character trigrams.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dimensions: usize,
}

/// Weights of the three feature families: whole words carry most of the meaning.
const WORD_WEIGHT: f32 = 1.0;
const BIGRAM_WEIGHT: f32 = 0.5;
const TRIGRAM_WEIGHT: f32 = 0.25;

impl HashingEmbedder {
    /// An embedder producing `dimensions`-wide vectors.
    pub fn new(dimensions: usize) -> Self {
        Self {
            dimensions: dimensions.max(1),
        }
    }

    fn add(&self, out: &mut [f32], feature_kind: u8, parts: &[&str], weight: f32) {
        let h = fnv1a(feature_kind, parts);
        let coordinate = (h % self.dimensions as u64) as usize;
        // The sign comes from bits the coordinate did not use, so collisions tend to cancel
        // instead of piling up (the "signed hashing trick").
        let sign = if (h >> 63) & 1 == 0 { 1.0 } else { -1.0 };
        out[coordinate] += sign * weight;
    }
}

/// FNV-1a over a feature-kind tag and the feature's parts. A fixed, documented function: the
/// embedding of a text must never change between builds, or stored text points would drift.
fn fnv1a(feature_kind: u8, parts: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    eat(feature_kind);
    for part in parts {
        for &b in part.as_bytes() {
            eat(b);
        }
        eat(0xff); // separator: ("ab","c") and ("a","bc") differ
    }
    // Final avalanche so the low bits used for the coordinate depend on every input byte.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl Embedder for HashingEmbedder {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed(&self, text: &str) -> Vec<f32> {
        let mut out = vec![0.0f32; self.dimensions];
        let lowered = text.to_lowercase();
        let words: Vec<&str> = lowered
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut previous: Option<&str> = None;
        for word in &words {
            self.add(&mut out, b'w', &[word], WORD_WEIGHT);
            if let Some(prev) = previous {
                self.add(&mut out, b'b', &[prev, word], BIGRAM_WEIGHT);
            }
            previous = Some(word);
            // Character trigrams of the word with boundary markers, so "index" and "indexes"
            // share most of their features.
            let marked: Vec<char> = std::iter::once('<')
                .chain(word.chars())
                .chain(std::iter::once('>'))
                .collect();
            let mut buf = [0u8; 12];
            for window in marked.windows(3) {
                let mut len = 0;
                for c in window {
                    len += c.encode_utf8(&mut buf[len..]).len();
                }
                let trigram = std::str::from_utf8(&buf[..len]).unwrap_or("");
                self.add(&mut out, b't', &[trigram], TRIGRAM_WEIGHT);
            }
        }
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            for v in &mut out {
                *v /= norm;
            }
        } else {
            // A text with no word characters still gets a valid, fixed unit vector, so a
            // cosine index never sees a zero vector.
            out[0] = 1.0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both are unit vectors: their dot product is their cosine.
    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn deterministic_and_normalised() {
        let e = HashingEmbedder::new(128);
        let a = e.embed("The quick brown fox");
        assert_eq!(a, e.embed("The quick brown fox"));
        assert_eq!(a, HashingEmbedder::new(128).embed("the QUICK brown fox!"));
        assert_eq!(a.len(), 128);
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(e.embed("").iter().all(|v| v.is_finite()));
        assert!(e.embed("!!! ???").iter().all(|v| v.is_finite()));
    }

    #[test]
    fn texts_that_share_words_are_near() {
        let e = HashingEmbedder::new(256);
        let base = e.embed("vector search under heavy load");
        let shares = e.embed("heavy load on vector search servers");
        let unrelated = e.embed("a recipe for lemon cake with almonds");
        let near = cosine(&base, &shares);
        let far = cosine(&base, &unrelated);
        assert!(near > 0.5, "sharing texts: cosine {near}");
        assert!(far < 0.2, "unrelated texts: cosine {far}");
        assert!(near > far + 0.3);
    }

    #[test]
    fn long_and_unicode_text() {
        let e = HashingEmbedder::new(64);
        let long = "large_test_data ".repeat(10_000);
        let v = e.embed(&long);
        assert!(v.iter().all(|x| x.is_finite()));
        let u = e.embed("naïve café 東京 über");
        assert!(u.iter().all(|x| x.is_finite()));
    }
}
