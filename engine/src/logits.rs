//! What decoding does with a row of logits: the greedy choice, log-probabilities for beams, the
//! best few (beams, and DeCap's projection onto its support memory).

/// Index of the first maximum (as `torch.argmax`; NaN are passed over).
///
/// The maximum of each chunk of 64 first, in vector registers, then the first position of the
/// best in its chunk: a scalar scan with a data-dependent branch cost ~13 instructions per logit
/// on ARM (emulated counts), 0.65 M per token over GPT-2's 50257.
pub fn argmax(row: &[f32]) -> u32 {
    const CHUNK: usize = 64;
    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        let max = chunk.iter().copied().fold(f32::NEG_INFINITY, crate::float::max);
        if max > best {
            (best, at) = (max, c * CHUNK);
        }
    }
    row[at..].iter().position(|&v| v == best).map_or(0, |i| at + i) as u32
}

/// `log(softmax(row))` computed the way the reference does (softmax, then log), in f32.
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum).ln()).collect()
}

/// The `k` largest values with their indices, largest first; equal values keep index order.
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(v > worst)` also keeps NaN out of the list
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in values.iter().enumerate() {
        if best.len() == k && !(v > best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i, v));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let v = [0.5, 2.0, f32::NEG_INFINITY, 2.0, 1.0];
        assert_eq!(top_k(&v, 3), vec![(1, 2.0), (3, 2.0), (4, 1.0)]);
        assert_eq!(top_k(&v, 1), vec![(1, 2.0)]);
    }

    #[test]
    fn log_softmax_matches_closed_form() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let z = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        for (got, x) in lp.iter().zip([1.0f32, 2.0, 3.0]) {
            assert!((got - (x - z)).abs() < 1e-6);
        }
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        // Across chunks: the same maximum in a later chunk, a NaN, a last short chunk; against
        // a plain scan.
        let mut row: Vec<f32> = (0..50257).map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0).collect();
        row[30] = f32::NAN;
        for (at, again) in [(100, 5000), (64, 128), (50256, 50256), (0, 63)] {
            let mut r = row.clone();
            (r[at], r[again]) = (9.5, 9.5);
            let want = (0..r.len()).fold(0, |b, i| if r[i] > r[b] || r[b].is_nan() { i } else { b });
            assert_eq!(argmax(&r), want as u32, "maxima at {at} and {again}");
            assert_eq!(argmax(&r), at.min(again) as u32);
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }
}
