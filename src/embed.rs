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

    /// The coordinate a feature lands on and the signed weight it adds there.
    fn coordinate_and_delta(&self, feature_kind: u8, parts: &[&[u8]], weight: f32) -> (usize, f32) {
        let h = fnv1a(feature_kind, parts);
        let coordinate = (h % self.dimensions as u64) as usize;
        // The sign comes from bits the coordinate did not use, so collisions tend to cancel
        // instead of piling up (the "signed hashing trick").
        let sign = if (h >> 63) & 1 == 0 { 1.0 } else { -1.0 };
        (coordinate, sign * weight)
    }

    /// A feature to keep ([`Feature`]), its coordinate as a u32: a vector of 2^32
    /// coordinates (16 GiB) is not one anybody embeds into.
    fn feature(&self, feature_kind: u8, parts: &[&[u8]], weight: f32) -> Feature {
        let (coordinate, delta) = self.coordinate_and_delta(feature_kind, parts, weight);
        debug_assert!(coordinate <= u32::MAX as usize);
        Feature {
            coordinate: coordinate as u32,
            delta,
        }
    }

    fn add(&self, out: &mut [f32], feature_kind: u8, parts: &[&[u8]], weight: f32) {
        let (coordinate, delta) = self.coordinate_and_delta(feature_kind, parts, weight);
        out[coordinate] += delta;
    }

    /// A word's own features, the word itself and its character trigrams, computed once for
    /// a word that many texts share (see [`embed_features`](Self::embed_features)).
    pub fn word_features(&self, word: &str) -> WordFeatures {
        let mut features = Vec::with_capacity(word.len() + 1);
        features.push(self.feature(b'w', &[word.as_bytes()], WORD_WEIGHT));
        for_each_trigram(word, |trigram| {
            features.push(self.feature(b't', &[trigram], TRIGRAM_WEIGHT));
        });
        WordFeatures(features)
    }

    /// The feature of the word pair `previous word` (adjacent in a text), computed once for
    /// a pair that many texts share.
    pub fn pair_feature(&self, previous: &str, word: &str) -> Feature {
        let parts = [previous.as_bytes(), word.as_bytes()];
        self.feature(b'b', &parts, BIGRAM_WEIGHT)
    }

    /// The embedding of a text from its features: each of its words' [`word_features`]
    /// (Self::word_features) and the [`pair_feature`](Self::pair_feature) of each two
    /// adjacent words. When the words are what [`embed`](Embedder::embed) splits the text
    /// into (lowercase, alphanumeric), this is `embed`'s vector, bit for bit.
    ///
    /// Why the same bits although the features are added in another order: every feature
    /// adds +-1, +-0.5 or +-0.25, so each coordinate is a multiple of 0.25 far below 2^22,
    /// which an f32 holds exactly whatever the order of the additions.
    pub fn embed_features<'a>(
        &self,
        words: impl IntoIterator<Item = &'a WordFeatures>,
        pairs: impl IntoIterator<Item = &'a Feature>,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; self.dimensions];
        // Plain loops: a flat-mapped chain of the two was not flattened by the compiler, and
        // its per-item state machine cost more than the additions.
        for word in words {
            for feature in &word.0 {
                out[feature.coordinate as usize] += feature.delta;
            }
        }
        for feature in pairs {
            out[feature.coordinate as usize] += feature.delta;
        }
        normalise(&mut out);
        out
    }
}

/// One hashed feature: the coordinate it lands on and the signed weight it adds there (8
/// bytes, so a cluster's cached pairs stay small in the cache).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feature {
    coordinate: u32,
    delta: f32,
}

/// One word's features: [`HashingEmbedder::word_features`].
#[derive(Debug, Clone, PartialEq)]
pub struct WordFeatures(Vec<Feature>);

/// Calls `f` with each character trigram of `word` with its boundary markers (`<word>`), so
/// "index" and "indexes" share most of their features.
fn for_each_trigram(word: &str, mut f: impl FnMut(&[u8])) {
    if word.is_ascii() {
        let bytes = word.as_bytes();
        // The word with its markers, read in place.
        let at = |i: usize| match i {
            0 => b'<',
            i if i == bytes.len() + 1 => b'>',
            i => bytes[i - 1],
        };
        for start in 0..bytes.len() {
            f(&[at(start), at(start + 1), at(start + 2)]);
        }
    } else {
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
            f(&buf[..len]);
        }
    }
}

/// Scales `out` to unit length; a zero vector (a text with no word characters) becomes a
/// fixed unit vector instead, so a cosine index never sees a zero vector.
fn normalise(out: &mut [f32]) {
    let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for v in out.iter_mut() {
            *v /= norm;
        }
    } else {
        out[0] = 1.0;
    }
}

/// FNV-1a over a feature-kind tag and the feature's parts. A fixed, documented function: the
/// embedding of a text must never change between builds, or stored text points would drift.
fn fnv1a(feature_kind: u8, parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    eat(feature_kind);
    for part in parts {
        for &b in *part {
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
        // Lowercase ASCII is embedded without a copy (the server embeds every text query).
        // The features, and the order they are added in, are the same on both paths.
        let lowered = if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Borrowed(text)
        } else {
            std::borrow::Cow::Owned(text.to_lowercase())
        };
        let words = lowered
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty());
        let mut previous: Option<&str> = None;
        for word in words {
            self.add(&mut out, b'w', &[word.as_bytes()], WORD_WEIGHT);
            if let Some(prev) = previous {
                self.add(
                    &mut out,
                    b'b',
                    &[prev.as_bytes(), word.as_bytes()],
                    BIGRAM_WEIGHT,
                );
            }
            previous = Some(word);
            for_each_trigram(word, |trigram| {
                self.add(&mut out, b't', &[trigram], TRIGRAM_WEIGHT);
            });
        }
        normalise(&mut out);
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

    /// The embedder as first written (a lowercased copy, a word list, a character list per
    /// word): the vectors must never change, or stored text points would drift.
    fn embed_as_first_written(e: &HashingEmbedder, text: &str) -> Vec<f32> {
        let mut out = vec![0.0f32; e.dimensions];
        let lowered = text.to_lowercase();
        let words: Vec<&str> = lowered
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut previous: Option<&str> = None;
        for word in &words {
            e.add(&mut out, b'w', &[word.as_bytes()], WORD_WEIGHT);
            if let Some(prev) = previous {
                e.add(
                    &mut out,
                    b'b',
                    &[prev.as_bytes(), word.as_bytes()],
                    BIGRAM_WEIGHT,
                );
            }
            previous = Some(word);
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
                e.add(&mut out, b't', &[&buf[..len]], TRIGRAM_WEIGHT);
            }
        }
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            for v in &mut out {
                *v /= norm;
            }
        } else {
            out[0] = 1.0;
        }
        out
    }

    #[test]
    fn the_same_vectors_as_first_written() {
        let synthetic = crate::synthetic::Synthetic::new(32, 64, 42);
        let mut texts: Vec<String> = (0..200).map(|id| synthetic.point(id).text).collect();
        texts.extend(
            [
                "",
                "a",
                "ab",
                "The QUICK brown fox!",
                "naïve café 東京 über",
                "x1 y22 z333",
                "  spaced   out  ",
                "MiXeD ascii and ÜNICODE",
                "!!! ???",
            ]
            .map(String::from),
        );
        for dimensions in [1, 32, 128] {
            let e = HashingEmbedder::new(dimensions);
            for text in &texts {
                let (now, then) = (e.embed(text), embed_as_first_written(&e, text));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&now), bits(&then), "{text:?} at {dimensions}");
            }
        }
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
