//! The 32-bit ARM kernel on [`Layout::Lanes`](super::Layout::Lanes) (Cortex-A7/A53 under a
//! 32-bit OS, e.g. Raspberry Pi OS armhf): one activation row by eight columns of a panel.
//!
//! VMULL.S8 of the low halves, VMLAL.S8 of the high halves into the same i16 products, VPADAL
//! into the i32 lanes: 16 multiply-adds in 3 instructions, exact when no weight is −128 (see
//! [`PackedWeights::no_min`](super::PackedWeights::no_min)); otherwise each half is added to the
//! i32 lanes by itself. Written as `asm!`: Rust's 32-bit NEON intrinsics are not stable. NEON
//! has 16 q registers: eight accumulate, one holds the activations, two a pair of columns.

use super::PANEL;

/// Σ_k a[k] · w[k][c] for the panel's 16 columns, into `out`, in two passes of eight columns.
///
/// # Safety
/// Built with NEON (`-C target-feature=+neon`); `a` holds `kp` bytes, `panel` `kp × 16`, `kp` a
/// non-zero multiple of 16.
pub unsafe fn row(a: &[i8], panel: &[i8], out: &mut [i32], no_min: bool) {
    let strips = a.len() / 16;
    debug_assert!(strips > 0 && a.len() % 16 == 0 && panel.len() == a.len() * PANEL && out.len() == PANEL);
    for half in 0..2 {
        let (w, o) = (unsafe { panel.as_ptr().add(half * 128) }, out[half * 8..].as_mut_ptr());
        // SAFETY: per the caller; each pass reads `strips` × 16 activation bytes and 128 weight
        // bytes of each 256-byte strip, and writes 8 sums.
        unsafe {
            if no_min {
                eight_columns_paired(a.as_ptr(), w, strips, o)
            } else {
                eight_columns(a.as_ptr(), w, strips, o)
            }
        }
    }
}

/// Adds the four i32 lanes of each of q8..q15 and stores the eight sums at `{o}`.
macro_rules! store_sums {
    () => {
        concat!(
            "vpadd.i32 d16, d16, d17\n",
            "vpadd.i32 d18, d18, d19\n",
            "vpadd.i32 d20, d20, d21\n",
            "vpadd.i32 d22, d22, d23\n",
            "vpadd.i32 d24, d24, d25\n",
            "vpadd.i32 d26, d26, d27\n",
            "vpadd.i32 d28, d28, d29\n",
            "vpadd.i32 d30, d30, d31\n",
            "vpadd.i32 d16, d16, d18\n",
            "vpadd.i32 d20, d20, d22\n",
            "vpadd.i32 d24, d24, d26\n",
            "vpadd.i32 d28, d28, d30\n",
            "vst1.32 {{d16}}, [{o}]!\n",
            "vst1.32 {{d20}}, [{o}]!\n",
            "vst1.32 {{d24}}, [{o}]!\n",
            "vst1.32 {{d28}}, [{o}]\n",
        )
    };
}

/// Two columns (weights in d2-d3 and d4-d5) into accumulators `$a` and `$b`, the products of
/// each pair of bytes added in an i16 first.
macro_rules! pair_paired {
    ($a:literal, $b:literal) => {
        concat!(
            "vmull.s8 q3, d0, d2\n",
            "vmull.s8 q4, d0, d4\n",
            "vmlal.s8 q3, d1, d3\n",
            "vmlal.s8 q4, d1, d5\n",
            "vpadal.s16 ",
            $a,
            ", q3\n",
            "vpadal.s16 ",
            $b,
            ", q4\n",
        )
    };
}

/// As [`pair_paired`], each half's products widened to i32 by itself.
macro_rules! pair_alone {
    ($a:literal, $b:literal) => {
        concat!(
            "vmull.s8 q3, d0, d2\n",
            "vmull.s8 q4, d0, d4\n",
            "vpadal.s16 ",
            $a,
            ", q3\n",
            "vpadal.s16 ",
            $b,
            ", q4\n",
            "vmull.s8 q3, d1, d3\n",
            "vmull.s8 q4, d1, d5\n",
            "vpadal.s16 ",
            $a,
            ", q3\n",
            "vpadal.s16 ",
            $b,
            ", q4\n",
        )
    };
}

/// One pass over eight columns: `$pair` multiplies two columns into two accumulators.
macro_rules! eight_columns {
    ($name:ident, $pair:ident) => {
        /// # Safety
        /// See [`row`].
        unsafe fn $name(a: *const i8, w: *const i8, strips: usize, o: *mut i32) {
            unsafe {
                std::arch::asm!(
                    "vmov.i32 q8, #0",
                    "vmov.i32 q9, #0",
                    "vmov.i32 q10, #0",
                    "vmov.i32 q11, #0",
                    "vmov.i32 q12, #0",
                    "vmov.i32 q13, #0",
                    "vmov.i32 q14, #0",
                    "vmov.i32 q15, #0",
                    "2:",
                    "vld1.8 {{d0, d1}}, [{a}]!",
                    "vld1.8 {{d2-d5}}, [{w}]!",
                    $pair!("q8", "q9"),
                    "vld1.8 {{d2-d5}}, [{w}]!",
                    $pair!("q10", "q11"),
                    "vld1.8 {{d2-d5}}, [{w}]!",
                    $pair!("q12", "q13"),
                    // The last pair, then on to the same half of the next strip.
                    "vld1.8 {{d2-d5}}, [{w}], {skip}",
                    $pair!("q14", "q15"),
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    store_sums!(),
                    a = inout(reg) a => _,
                    w = inout(reg) w => _,
                    n = inout(reg) strips => _,
                    o = inout(reg) o => _,
                    skip = in(reg) 32 + 128,
                    out("q0") _, out("q1") _, out("q2") _, out("q3") _, out("q4") _,
                    out("q8") _, out("q9") _, out("q10") _, out("q11") _,
                    out("q12") _, out("q13") _, out("q14") _, out("q15") _,
                    options(nostack),
                );
            }
        }
    };
}

eight_columns!(eight_columns_paired, pair_paired);
eight_columns!(eight_columns, pair_alone);
