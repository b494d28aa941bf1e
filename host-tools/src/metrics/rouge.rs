//! ROUGE-L as pycocoevalcap's `Rouge`: per image, the best LCS precision and the best LCS recall
//! over its references (each maximised separately), F-measure with β = 1.2; the mean over images.

/// β of the F-measure (recall weighted more than precision).
const BETA: f64 = 1.2;

/// Mean ROUGE-L over the candidates.
pub fn rouge_l(candidates: &[String], references: &[Vec<String>]) -> f64 {
    if candidates.is_empty() {
        return 0.0;
    }
    let total: f64 = candidates.iter().zip(references).map(|(c, refs)| sentence_rouge_l(c, refs)).sum();
    total / candidates.len() as f64
}

/// ROUGE-L of one candidate. Words are split on single spaces, as pycocoevalcap does.
pub fn sentence_rouge_l(candidate: &str, references: &[String]) -> f64 {
    let cand: Vec<&str> = candidate.split(' ').collect();
    let (mut prec, mut rec) = (0f64, 0f64);
    for r in references {
        let reference: Vec<&str> = r.split(' ').collect();
        let lcs = lcs_len(&reference, &cand) as f64;
        prec = prec.max(lcs / cand.len() as f64);
        rec = rec.max(lcs / reference.len() as f64);
    }
    if prec == 0.0 || rec == 0.0 {
        return 0.0;
    }
    (1.0 + BETA * BETA) * prec * rec / (rec + BETA * BETA * prec)
}

/// Length of the longest common subsequence (one row of the DP table at a time).
fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut row = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(row[j]) };
        }
        prev = row;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_of_known_pairs() {
        assert_eq!(lcs_len(&["a", "b", "c", "d"], &["a", "c", "d", "x"]), 3);
        assert_eq!(lcs_len(&["a"], &["b"]), 0);
    }
}
