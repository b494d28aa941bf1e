//! Caption metrics as pycocoevalcap computes them: BLEU-1..4, ROUGE-L and CIDEr-D, on text
//! normalised like its PTB tokenizer. Every function takes the candidates and, per candidate,
//! its references, aligned by index and already tokenised (space-separated words); the
//! agreement with pycocoevalcap is checked by `tests/metrics_reference.rs`.

pub mod bleu;
pub mod cider;
pub mod rouge;
pub mod tokenize;

use std::collections::HashMap;

use serde::Serialize;

/// BLEU's and CIDEr's n-gram order.
pub const MAX_N: usize = 4;

/// Corpus-level scores of one set of candidates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// BLEU-1..4 (corpus level, "closest" reference length).
    pub bleu: [f64; MAX_N],
    pub rouge_l: f64,
    /// CIDEr-D (×10 scale, document frequencies from the references).
    pub cider: f64,
}

/// All metrics of `candidates` against `references` (tokenised text).
pub fn score(candidates: &[String], references: &[Vec<String>]) -> Scores {
    Scores {
        bleu: bleu::corpus_bleu(candidates, references),
        rouge_l: rouge::rouge_l(candidates, references),
        cider: cider::cider_d(candidates, references),
    }
}

/// Counts of every 1..=n-gram of a whitespace-tokenised sentence.
pub(crate) fn ngram_counts(sentence: &str, n: usize) -> HashMap<Vec<&str>, usize> {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let mut counts = HashMap::new();
    for k in 1..=n {
        for w in words.windows(k) {
            *counts.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}
