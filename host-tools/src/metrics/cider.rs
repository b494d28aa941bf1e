//! CIDEr-D as pycocoevalcap's `CiderScorer`: tf-idf vectors of 1..4-grams with document
//! frequencies counted over the reference sets of the corpus, candidate weights clipped by the
//! reference's, a Gaussian penalty (σ = 6) on the length difference, averaged over the n-gram
//! orders and the references, ×10, then the mean over images.
//!
//! One quirk is reproduced on purpose: the "length" pycocoevalcap compares is the number of
//! bigrams (its `n == 1` test indexes orders from 0), not the number of words.

use std::collections::{HashMap, HashSet};

use super::{ngram_counts, MAX_N};

const SIGMA: f64 = 6.0;

struct Vector {
    weights: Vec<HashMap<Vec<String>, f64>>,
    norms: [f64; MAX_N],
    length: f64,
}

/// Mean CIDEr-D over the candidates.
pub fn cider_d(candidates: &[String], references: &[Vec<String>]) -> f64 {
    if candidates.is_empty() {
        return 0.0;
    }
    let mut df: HashMap<Vec<String>, f64> = HashMap::new();
    for refs in references {
        let grams: HashSet<Vec<String>> =
            refs.iter().flat_map(|r| ngram_counts(r, MAX_N).into_keys().map(owned)).collect();
        for g in grams {
            *df.entry(g).or_insert(0.0) += 1.0;
        }
    }
    let log_n = (references.len() as f64).ln();
    let vector = |s: &str| to_vector(s, &df, log_n);
    let mut total = 0f64;
    for (cand, refs) in candidates.iter().zip(references) {
        let c = vector(cand);
        let mut sum = [0f64; MAX_N];
        for r in refs {
            let sims = similarity(&c, &vector(r));
            for (s, v) in sum.iter_mut().zip(sims) {
                *s += v;
            }
        }
        let mean = sum.iter().sum::<f64>() / MAX_N as f64;
        total += mean / refs.len() as f64 * 10.0;
    }
    total / candidates.len() as f64
}

fn owned(g: Vec<&str>) -> Vec<String> {
    g.into_iter().map(str::to_string).collect()
}

fn to_vector(sentence: &str, df: &HashMap<Vec<String>, f64>, log_n: f64) -> Vector {
    let mut weights: Vec<HashMap<Vec<String>, f64>> = vec![HashMap::new(); MAX_N];
    let mut norms = [0f64; MAX_N];
    let mut length = 0f64;
    for (g, tf) in ngram_counts(sentence, MAX_N) {
        let g = owned(g);
        let idf = df.get(&g).copied().unwrap_or(0.0).max(1.0).ln();
        let n = g.len() - 1;
        let w = tf as f64 * (log_n - idf);
        norms[n] += w * w;
        if n == 1 {
            length += tf as f64;
        }
        weights[n].insert(g, w);
    }
    Vector { weights, norms: norms.map(f64::sqrt), length }
}

fn similarity(hyp: &Vector, reference: &Vector) -> [f64; MAX_N] {
    let delta = hyp.length - reference.length;
    let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
    let mut val = [0f64; MAX_N];
    for (n, v) in val.iter_mut().enumerate() {
        for (g, &w) in &hyp.weights[n] {
            let r = reference.weights[n].get(g).copied().unwrap_or(0.0);
            *v += w.min(r) * r;
        }
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            *v /= hyp.norms[n] * reference.norms[n];
        }
        *v *= penalty;
    }
    val
}
