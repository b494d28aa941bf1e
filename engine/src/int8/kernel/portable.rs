//! The kernel in plain Rust, on [`Layout::Lanes`](super::Layout::Lanes): the reference the
//! vector kernels are checked against, and what the tests run on a CPU that has none of them.

use super::PANEL;

/// Σ_k a[k] · w[k][c] for the panel's 16 columns, into `out`.
pub fn lanes_row(a: &[i8], panel: &[i8], out: &mut [i32]) {
    let depth = a.len();
    for (c, o) in out.iter_mut().enumerate().take(PANEL) {
        // Column c's strips are 16 bytes at c·16 of every 256-byte group.
        *o = a
            .chunks_exact(16)
            .zip(panel.chunks_exact(16 * PANEL))
            .map(|(x, group)| x.iter().zip(&group[c * 16..][..16]).map(|(&x, &w)| x as i32 * w as i32).sum::<i32>())
            .sum();
    }
    debug_assert_eq!(panel.len(), depth * PANEL);
}
