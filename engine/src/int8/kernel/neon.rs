//! aarch64 kernels on [`Layout::Lanes`](super::Layout::Lanes): one activation row by one panel
//! of 16 columns, a 16-byte strip of `k` at a time.
//!
//! - [`dot_row`]: SDOT (FEAT_DotProd: Cortex-A55/A76/A78, Jetson Orin), 16 multiply-adds an
//!   instruction. Written as `asm!` because Rust's `vdotq_s32` is not stable yet.
//! - [`wide_row`]: the widening multiply for cores without it (Cortex-A53/A72, Pi 3/4, Jetson
//!   Nano): SMULL of the low halves, SMLAL2 of the high halves into the same i16 products, then
//!   SADALP into the i32 lanes: 16 multiply-adds in 3 instructions. Two i8 products only fit an
//!   i16 when no weight is −128 (see [`PackedWeights::no_min`](super::PackedWeights::no_min));
//!   otherwise each half goes to i32 by itself (4 instructions).
//!
//! Each column's four i32 lanes are added at the end (ADDP), so the sums are exact, the same as
//! every other kernel's.

use std::arch::aarch64::*;

use super::PANEL;

/// Bytes of `k` per strip.
const STRIP: usize = 16;

/// Σ_k a[k] · w[k][c] for the panel's 16 columns, into `out`.
///
/// # Safety
/// The CPU has FEAT_DotProd; `a` holds `kp` bytes, `panel` `kp × 16`, `kp` a multiple of 16.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_row(a: &[i8], panel: &[i8], out: &mut [i32]) {
    debug_assert!(a.len() % STRIP == 0 && panel.len() == a.len() * PANEL && out.len() == PANEL);
    unsafe {
        let mut acc = [vdupq_n_s32(0); PANEL];
        let w = panel.as_ptr();
        for (g, x) in a.chunks_exact(STRIP).enumerate() {
            let x = vld1q_s8(x.as_ptr());
            let strip = w.add(g * STRIP * PANEL);
            for quad in 0..4 {
                let ws = vld1q_s8_x4(strip.add(quad * 4 * STRIP));
                for (c, w) in [ws.0, ws.1, ws.2, ws.3].into_iter().enumerate() {
                    sdot(&mut acc[quad * 4 + c], x, w);
                }
            }
        }
        store_sums(&acc, out);
    }
}

/// `acc += Σ` of each four bytes of `x · w` (SDOT, by vector).
#[inline(always)]
unsafe fn sdot(acc: &mut int32x4_t, x: int8x16_t, w: int8x16_t) {
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {x:v}.16b, {w:v}.16b",
            acc = inout(vreg) *acc,
            x = in(vreg) x,
            w = in(vreg) w,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
}

/// As [`dot_row`], with the widening multiply (any aarch64 CPU). `NO_MIN`: no weight is −128.
///
/// # Safety
/// As [`dot_row`], minus the dot product.
#[target_feature(enable = "neon")]
pub unsafe fn wide_row<const NO_MIN: bool>(a: &[i8], panel: &[i8], out: &mut [i32]) {
    debug_assert!(a.len() % STRIP == 0 && panel.len() == a.len() * PANEL && out.len() == PANEL);
    unsafe {
        let mut acc = [vdupq_n_s32(0); PANEL];
        let w = panel.as_ptr();
        for (g, x) in a.chunks_exact(STRIP).enumerate() {
            let x = vld1q_s8(x.as_ptr());
            let x_lo = vget_low_s8(x);
            let strip = w.add(g * STRIP * PANEL);
            for quad in 0..4 {
                let ws = vld1q_s8_x4(strip.add(quad * 4 * STRIP));
                for (c, w) in [ws.0, ws.1, ws.2, ws.3].into_iter().enumerate() {
                    let acc = &mut acc[quad * 4 + c];
                    let low = vmull_s8(x_lo, vget_low_s8(w));
                    if NO_MIN {
                        *acc = vpadalq_s16(*acc, vmlal_high_s8(low, x, w));
                    } else {
                        *acc = vpadalq_s16(vpadalq_s16(*acc, low), vmull_high_s8(x, w));
                    }
                }
            }
        }
        store_sums(&acc, out);
    }
}

/// Each accumulator's four lanes summed: `out[c] = Σ acc[c]`.
#[inline(always)]
unsafe fn store_sums(acc: &[int32x4_t; PANEL], out: &mut [i32]) {
    unsafe {
        for (quad, out) in acc.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            let sums = vpaddq_s32(vpaddq_s32(quad[0], quad[1]), vpaddq_s32(quad[2], quad[3]));
            vst1q_s32(out.as_mut_ptr(), sums);
        }
    }
}
