//! Corpus BLEU exactly as pycocoevalcap's `BleuScorer.compute_score(option="closest")`: n-gram
//! matches clipped by the largest count in any single reference, summed over the corpus, the
//! reference length closest to each candidate (ties: the shorter), one brevity penalty.

use std::collections::HashMap;

use super::{ngram_counts, MAX_N};

/// BLEU-1..4 of the corpus.
pub fn corpus_bleu(candidates: &[String], references: &[Vec<String>]) -> [f64; MAX_N] {
    const SMALL: f64 = 1e-9;
    const TINY: f64 = 1e-15;
    let (mut test_len, mut ref_len) = (0f64, 0f64);
    let mut guess = [0f64; MAX_N];
    let mut correct = [0f64; MAX_N];
    for (cand, refs) in candidates.iter().zip(references) {
        let mut max_counts: HashMap<Vec<&str>, usize> = HashMap::new();
        let mut lens = Vec::with_capacity(refs.len());
        for r in refs {
            lens.push(r.split_whitespace().count());
            for (g, c) in ngram_counts(r, MAX_N) {
                let m = max_counts.entry(g).or_insert(0);
                *m = (*m).max(c);
            }
        }
        let len = cand.split_whitespace().count();
        let closest = lens.iter().map(|&l| ((l as i64 - len as i64).abs(), l)).min().map_or(0, |(_, l)| l);
        test_len += len as f64;
        ref_len += closest as f64;
        for (k, g) in guess.iter_mut().enumerate() {
            *g += len.saturating_sub(k) as f64;
        }
        for (g, c) in ngram_counts(cand, MAX_N) {
            correct[g.len() - 1] += c.min(max_counts.get(&g).copied().unwrap_or(0)) as f64;
        }
    }
    let mut bleus = [0f64; MAX_N];
    let mut product = 1f64;
    for k in 0..MAX_N {
        product *= (correct[k] + TINY) / (guess[k] + SMALL);
        bleus[k] = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (test_len + TINY) / (ref_len + SMALL);
    if ratio < 1.0 {
        for b in &mut bleus {
            *b *= (1.0 - 1.0 / ratio).exp();
        }
    }
    bleus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_text_scores_one() {
        let c = vec!["a dog runs on the grass".to_string()];
        let r = vec![vec!["a dog runs on the grass".to_string(), "a cat".to_string()]];
        for b in corpus_bleu(&c, &r) {
            assert!((b - 1.0).abs() < 1e-9, "{b}");
        }
    }
}
