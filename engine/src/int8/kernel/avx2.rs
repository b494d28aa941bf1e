//! The x86-64 kernel for CPUs without AVX-512 VNNI (AVX2 laptops and desktops, older Xeons), on
//! [`Layout::Lanes`](super::Layout::Lanes): one activation row by one panel of 16 columns.
//!
//! Each 16-byte strip of the row is widened to i16 once; each column's strip is widened as it is
//! loaded (VPMOVSXBW), multiplied and summed in pairs into i32 lanes (VPMADDWD), and added to the
//! column's accumulator: 16 multiply-adds in 3 instructions, exact for any int8 values.

use std::arch::x86_64::*;

use super::PANEL;

/// Σ_k a[k] · w[k][c] for the panel's 16 columns, into `out`.
///
/// # Safety
/// The CPU has AVX2; `a` holds `kp` bytes, `panel` `kp × 16`, `kp` a multiple of 16.
#[target_feature(enable = "avx2")]
pub unsafe fn row(a: &[i8], panel: &[i8], out: &mut [i32]) {
    debug_assert!(a.len() % 16 == 0 && panel.len() == a.len() * PANEL && out.len() == PANEL);
    unsafe {
        let mut acc = [_mm256_setzero_si256(); PANEL];
        let w = panel.as_ptr();
        for (g, x) in a.chunks_exact(16).enumerate() {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.as_ptr().cast()));
            let strip = w.add(g * 16 * PANEL);
            for (c, acc) in acc.iter_mut().enumerate() {
                let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(strip.add(c * 16).cast()));
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(x, w));
            }
        }
        // Each accumulator's eight lanes summed: pairs of accumulators added lane-wise in halves
        // (hadd), then the two 128-bit halves of each result.
        for (eight, out) in acc.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            let h01 = _mm256_hadd_epi32(eight[0], eight[1]);
            let h23 = _mm256_hadd_epi32(eight[2], eight[3]);
            let h45 = _mm256_hadd_epi32(eight[4], eight[5]);
            let h67 = _mm256_hadd_epi32(eight[6], eight[7]);
            // Lanes: [c0 c0 c1 c1 | c0 c0 c1 c1] → [c0 c1 c2 c3 | c0 c1 c2 c3] → halves added.
            let q0123 = _mm256_hadd_epi32(h01, h23);
            let q4567 = _mm256_hadd_epi32(h45, h67);
            let lo = _mm256_permute2x128_si256(q0123, q4567, 0x20);
            let hi = _mm256_permute2x128_si256(q0123, q4567, 0x31);
            _mm256_storeu_si256(out.as_mut_ptr().cast(), _mm256_add_epi32(lo, hi));
        }
    }
}
