//! Near-duplicate detection with MinHash and locality-sensitive hashing, as datatrove and
//! text-dedup do: word n-gram shingles, `bands × rows` min-hashes, documents sharing a band
//! bucket are candidates, kept only if their estimated Jaccard similarity reaches the threshold.
//!
//! Hand-written (about 100 lines) because the Rust MinHash crates pull in large dependency
//! trees or are unmaintained; the hash is FNV-1a then splitmix64, fixed and seedless, so the
//! result is identical on every machine and Rust version (std's hashers promise neither).

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinHashConfig {
    /// Words per shingle.
    pub shingle: usize,
    pub bands: usize,
    pub rows: usize,
    /// Estimated Jaccard similarity at or above which a document is a near-duplicate.
    pub threshold: f64,
}

impl Default for MinHashConfig {
    /// datatrove's defaults: 5-grams, 14 bands of 8 rows.
    fn default() -> Self {
        Self {
            shingle: 5,
            bands: 14,
            rows: 8,
            threshold: 0.8,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The MinHash signature of `text` (`bands * rows` values).
pub fn signature(text: &str, cfg: &MinHashConfig) -> Vec<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let k = cfg.shingle.max(1);
    let n = cfg.bands * cfg.rows;
    let mut sig = vec![u64::MAX; n];
    let shingles: Vec<u64> = if words.len() < k {
        vec![fnv1a(words.join(" ").as_bytes())]
    } else {
        words
            .windows(k)
            .map(|w| fnv1a(w.join(" ").as_bytes()))
            .collect()
    };
    for s in shingles {
        for (i, slot) in sig.iter_mut().enumerate() {
            let h = splitmix64(s ^ splitmix64(i as u64 + 1));
            if h < *slot {
                *slot = h;
            }
        }
    }
    sig
}

fn similarity(a: &[u64], b: &[u64]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// For each document, `Some(i)` when it near-duplicates the earlier kept document `i`.
/// Earlier documents win, so the result depends only on the input order.
pub fn near_duplicates(texts: &[&str], cfg: &MinHashConfig) -> Vec<Option<usize>> {
    use rayon::prelude::*;
    let sigs: Vec<Vec<u64>> = texts.par_iter().map(|t| signature(t, cfg)).collect();
    let mut buckets: HashMap<(usize, u64), Vec<usize>> = HashMap::new();
    let mut out = vec![None; texts.len()];
    for (i, sig) in sigs.iter().enumerate() {
        let keys: Vec<(usize, u64)> = sig
            .chunks(cfg.rows.max(1))
            .enumerate()
            .map(|(b, rows)| (b, rows.iter().fold(0u64, |h, &x| splitmix64(h ^ x))))
            .collect();
        let dup = keys
            .iter()
            .filter_map(|k| buckets.get(k))
            .flatten()
            .copied()
            .find(|&j| similarity(sig, &sigs[j]) >= cfg.threshold);
        match dup {
            Some(j) => out[i] = Some(j),
            None => {
                for k in keys {
                    buckets.entry(k).or_default().push(i);
                }
            }
        }
    }
    out
}
