//! [`dot`](super::dot) and [`axpy`](super::axpy) in NEON intrinsics (aarch64): the same IEEE
//! operations in the same order.

use std::arch::aarch64::*;

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    // SAFETY: NEON is part of aarch64; every load reads 16 floats of a 16-float chunk.
    let lanes = unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (x, y) in ac.clone().zip(bc.clone()) {
            multiply_add(&mut acc, vld1q_f32_x4(x.as_ptr()), vld1q_f32_x4(y.as_ptr()));
        }
        sum_lanes(acc)
    };
    let tail = ac.remainder().iter().zip(bc.remainder()).fold(0f32, |s, (x, y)| s + x * y);
    lanes + tail
}

/// `acc += x · y` lane by lane, multiplied then added.
#[inline(always)]
unsafe fn multiply_add(acc: &mut [float32x4_t; 4], x: float32x4x4_t, y: float32x4x4_t) {
    acc[0] = vaddq_f32(acc[0], vmulq_f32(x.0, y.0));
    acc[1] = vaddq_f32(acc[1], vmulq_f32(x.1, y.1));
    acc[2] = vaddq_f32(acc[2], vmulq_f32(x.2, y.2));
    acc[3] = vaddq_f32(acc[3], vmulq_f32(x.3, y.3));
}

/// Halves (lanes l and l + 8), quarters (l and l + 4), then (q0 + q2) + (q1 + q3).
#[inline(always)]
unsafe fn sum_lanes(acc: [float32x4_t; 4]) -> f32 {
    let quarters = vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
    vpadds_f32(vadd_f32(vget_low_f32(quarters), vget_high_f32(quarters)))
}

/// Channels of a head that [`scores`] and [`context`] take: every head of CLIP ViT-B and
/// GPT-2.
pub const HEAD: usize = 64;

/// `scores[j] = dot(q, keys[at(j)..])` for `HEAD` channels, with `q` held in registers
/// rather than loaded again for every key (emulated counts: a third fewer instructions).
#[inline(always)]
pub fn scores(q: &[f32], keys: &[f32], at: impl Fn(usize) -> usize, scores: &mut [f32]) {
    let q = &q[..HEAD];
    // SAFETY: NEON is part of aarch64; every load reads 16 floats of a HEAD-float slice.
    unsafe {
        let qv: [float32x4x4_t; HEAD / 16] = std::array::from_fn(|c| vld1q_f32_x4(q[16 * c..].as_ptr()));
        for (j, score) in scores.iter_mut().enumerate() {
            let key = &keys[at(j)..][..HEAD];
            let mut acc = [vdupq_n_f32(0.0); 4];
            for (c, &x) in qv.iter().enumerate() {
                multiply_add(&mut acc, x, vld1q_f32_x4(key[16 * c..].as_ptr()));
            }
            // `+ 0.0`: `dot`'s empty tail, kept so that -0.0 turns out as it does there.
            *score = sum_lanes(acc) + 0.0;
        }
    }
}

/// `row = Σ_j p_j · values[at(j)..]` for `HEAD` channels, from zero and key by key as
/// `row.fill(0.0)` then [`axpy`] would, with the row held in registers throughout.
#[inline(always)]
pub fn context(p: &[f32], values: &[f32], at: impl Fn(usize) -> usize, row: &mut [f32]) {
    let row = &mut row[..HEAD];
    // SAFETY: NEON is part of aarch64; every load and store covers 16 floats of a
    // HEAD-float slice.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); HEAD / 4];
        for (j, &p) in p.iter().enumerate() {
            let x = &values[at(j)..][..HEAD];
            for (c, acc) in acc.chunks_exact_mut(4).enumerate() {
                let xv = vld1q_f32_x4(x[16 * c..].as_ptr());
                acc[0] = vaddq_f32(acc[0], vmulq_n_f32(xv.0, p));
                acc[1] = vaddq_f32(acc[1], vmulq_n_f32(xv.1, p));
                acc[2] = vaddq_f32(acc[2], vmulq_n_f32(xv.2, p));
                acc[3] = vaddq_f32(acc[3], vmulq_n_f32(xv.3, p));
            }
        }
        for (c, acc) in acc.chunks_exact(4).enumerate() {
            vst1q_f32_x4(row[16 * c..].as_mut_ptr(), float32x4x4_t(acc[0], acc[1], acc[2], acc[3]));
        }
    }
}

#[inline(always)]
pub fn axpy(p: f32, x: &[f32], y: &mut [f32]) {
    let (xc, mut yc) = (x.chunks_exact(16), y.chunks_exact_mut(16));
    for (x, y) in xc.clone().zip(&mut yc) {
        // SAFETY: NEON is part of aarch64; each load and store covers one 16-float chunk.
        unsafe {
            let (xv, yv) = (vld1q_f32_x4(x.as_ptr()), vld1q_f32_x4(y.as_ptr()));
            let sum = float32x4x4_t(
                vaddq_f32(yv.0, vmulq_n_f32(xv.0, p)),
                vaddq_f32(yv.1, vmulq_n_f32(xv.1, p)),
                vaddq_f32(yv.2, vmulq_n_f32(xv.2, p)),
                vaddq_f32(yv.3, vmulq_n_f32(xv.3, p)),
            );
            vst1q_f32_x4(y.as_mut_ptr(), sum);
        }
    }
    for (y, x) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
        *y += p * x;
    }
}
