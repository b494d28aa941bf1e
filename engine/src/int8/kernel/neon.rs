//! aarch64 kernels on [`Layout::Lanes`](super::Layout::Lanes): one activation row by one panel
//! of 16 columns, a 16-byte strip of `k` at a time.
//!
//! - [`dot_row`]: SDOT (FEAT_DotProd: Cortex-A55/A76/A78, Jetson Orin), 16 multiply-adds an
//!   instruction.
//! - [`wide_row`]: the widening multiply for cores without it (Cortex-A53/A72, Pi 3/4, Jetson
//!   Nano): SMULL of the low halves, SMLAL2 of the high halves into the same i16 products, then
//!   SADALP into the i32 lanes: 16 multiply-adds in 3 instructions. Two i8 products only fit an
//!   i16 when no weight is −128 (see [`PackedWeights::no_min`](super::PackedWeights::no_min));
//!   otherwise each half goes to i32 by itself (4 instructions).
//!
//! Written as `asm!`: Rust's `vdotq_s32` is not stable, and from intrinsics LLVM loads the
//! weights two registers at a time where LD1 takes four (28 instructions a strip where 23 do,
//! counted under emulation). Registers: the row's strip in v0, four columns' strips in v4-v7,
//! one accumulator per column in v16-v31, products in v1-v3; none of the callee-saved v8-v15.
//! Each column's four i32 lanes are added at the end (ADDP), so the sums are exact, the same as
//! every other kernel's.

use super::PANEL;

/// Adds the four lanes of each accumulator v16..v31 and stores the 16 sums at `{o}`.
macro_rules! store_sums {
    () => {
        concat!(
            "addp v16.4s, v16.4s, v17.4s\n",
            "addp v18.4s, v18.4s, v19.4s\n",
            "addp v20.4s, v20.4s, v21.4s\n",
            "addp v22.4s, v22.4s, v23.4s\n",
            "addp v24.4s, v24.4s, v25.4s\n",
            "addp v26.4s, v26.4s, v27.4s\n",
            "addp v28.4s, v28.4s, v29.4s\n",
            "addp v30.4s, v30.4s, v31.4s\n",
            "addp v16.4s, v16.4s, v18.4s\n",
            "addp v20.4s, v20.4s, v22.4s\n",
            "addp v24.4s, v24.4s, v26.4s\n",
            "addp v28.4s, v28.4s, v30.4s\n",
            "stp q16, q20, [{o}]\n",
            "stp q24, q28, [{o}, #32]\n",
        )
    };
}

/// One strip of the row at `{a}` by the panel at `{w}`, both pointers moved on.
macro_rules! strip {
    ($four:ident) => {
        concat!(
            "ldr q0, [{a}], #16\n",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64\n",
            $four!("v16", "v17", "v18", "v19"),
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64\n",
            $four!("v20", "v21", "v22", "v23"),
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64\n",
            $four!("v24", "v25", "v26", "v27"),
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64\n",
            $four!("v28", "v29", "v30", "v31"),
        )
    };
}

/// `2 × {pairs} + {odd}` strips of the row at `{a}` by the panel at `{w}`: `$four` multiplies the
/// four columns in v4-v7 into the accumulators it is given.
macro_rules! row_kernel {
    ($four:ident) => {
        concat!(
            "movi v16.16b, #0\n",
            "movi v17.16b, #0\n",
            "movi v18.16b, #0\n",
            "movi v19.16b, #0\n",
            "movi v20.16b, #0\n",
            "movi v21.16b, #0\n",
            "movi v22.16b, #0\n",
            "movi v23.16b, #0\n",
            "movi v24.16b, #0\n",
            "movi v25.16b, #0\n",
            "movi v26.16b, #0\n",
            "movi v27.16b, #0\n",
            "movi v28.16b, #0\n",
            "movi v29.16b, #0\n",
            "movi v30.16b, #0\n",
            "movi v31.16b, #0\n",
            // Two strips a turn (the loop's own instructions are 2 of 23 a strip for SDOT), then
            // the odd one.
            "cbz {pairs}, 3f\n",
            "2:\n",
            strip!($four),
            strip!($four),
            "subs {pairs}, {pairs}, #1\n",
            "b.ne 2b\n",
            "3:\n",
            "cbz {odd}, 4f\n",
            strip!($four),
            "4:\n",
            store_sums!(),
        )
    };
}

/// SDOT of the four columns by the row's strip.
macro_rules! four_dot {
    ($c0:literal, $c1:literal, $c2:literal, $c3:literal) => {
        concat!(
            "sdot ",
            $c0,
            ".4s, v4.16b, v0.16b\n",
            "sdot ",
            $c1,
            ".4s, v5.16b, v0.16b\n",
            "sdot ",
            $c2,
            ".4s, v6.16b, v0.16b\n",
            "sdot ",
            $c3,
            ".4s, v7.16b, v0.16b\n",
        )
    };
}

/// The widening multiply of the four columns, each pair of products added in an i16.
macro_rules! four_paired {
    ($c0:literal, $c1:literal, $c2:literal, $c3:literal) => {
        concat!(
            "smull v1.8h, v0.8b, v4.8b\n",
            "smull v2.8h, v0.8b, v5.8b\n",
            "smull v3.8h, v0.8b, v6.8b\n",
            "smlal2 v1.8h, v0.16b, v4.16b\n",
            "smlal2 v2.8h, v0.16b, v5.16b\n",
            "smlal2 v3.8h, v0.16b, v6.16b\n",
            "sadalp ",
            $c0,
            ".4s, v1.8h\n",
            "sadalp ",
            $c1,
            ".4s, v2.8h\n",
            "sadalp ",
            $c2,
            ".4s, v3.8h\n",
            "smull v1.8h, v0.8b, v7.8b\n",
            "smlal2 v1.8h, v0.16b, v7.16b\n",
            "sadalp ",
            $c3,
            ".4s, v1.8h\n",
        )
    };
}

/// The widening multiply of the four columns, each half's products widened by itself.
macro_rules! four_alone {
    ($c0:literal, $c1:literal, $c2:literal, $c3:literal) => {
        concat!(
            "smull v1.8h, v0.8b, v4.8b\n",
            "smull2 v2.8h, v0.16b, v4.16b\n",
            "smull v3.8h, v0.8b, v5.8b\n",
            "sadalp ",
            $c0,
            ".4s, v1.8h\n",
            "sadalp ",
            $c0,
            ".4s, v2.8h\n",
            "smull2 v1.8h, v0.16b, v5.16b\n",
            "sadalp ",
            $c1,
            ".4s, v3.8h\n",
            "sadalp ",
            $c1,
            ".4s, v1.8h\n",
            "smull v1.8h, v0.8b, v6.8b\n",
            "smull2 v2.8h, v0.16b, v6.16b\n",
            "smull v3.8h, v0.8b, v7.8b\n",
            "sadalp ",
            $c2,
            ".4s, v1.8h\n",
            "sadalp ",
            $c2,
            ".4s, v2.8h\n",
            "smull2 v1.8h, v0.16b, v7.16b\n",
            "sadalp ",
            $c3,
            ".4s, v3.8h\n",
            "sadalp ",
            $c3,
            ".4s, v1.8h\n",
        )
    };
}

/// One kernel function: the row at `a` (`kp` bytes) by the panel, 16 sums into `out`.
macro_rules! row_fn {
    ($(#[$doc:meta])* $name:ident, $features:literal, $four:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(a: &[i8], panel: &[i8], out: &mut [i32]) {
            let strips = a.len() / 16;
            debug_assert!(strips > 0 && a.len() % 16 == 0 && panel.len() == a.len() * PANEL && out.len() == PANEL);
            // SAFETY: per the caller: `strips` × 16 bytes of `a`, 256 bytes of the panel per strip,
            // 16 sums into `out`.
            unsafe {
                std::arch::asm!(
                    row_kernel!($four),
                    a = inout(reg) a.as_ptr() => _,
                    w = inout(reg) panel.as_ptr() => _,
                    pairs = inout(reg) strips / 2 => _,
                    odd = in(reg) strips % 2,
                    o = in(reg) out.as_mut_ptr(),
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                    out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                    out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                    out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                    out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                    options(nostack),
                );
            }
        }
    };
}

row_fn!(
    /// Σ_k a[k] · w[k][c] for the panel's 16 columns, into `out`, by SDOT.
    ///
    /// # Safety
    /// The CPU has FEAT_DotProd; `a` holds `kp` bytes, `panel` `kp × 16`, `out` 16 values, `kp`
    /// a non-zero multiple of 16.
    dot_row,
    "neon,dotprod",
    four_dot
);

row_fn!(
    /// As [`dot_row`], by the widening multiply, when no weight is −128.
    ///
    /// # Safety
    /// As [`dot_row`], minus the dot product.
    wide_row_paired,
    "neon",
    four_paired
);

row_fn!(
    /// As [`dot_row`], by the widening multiply, for any weights.
    ///
    /// # Safety
    /// As [`dot_row`], minus the dot product.
    wide_row,
    "neon",
    four_alone
);

/// Adds the four lanes of each of the four accumulators `$a`..`$d` into `$a` (four sums).
macro_rules! sum4 {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!(
            "addp ", $a, ".4s, ", $a, ".4s, ", $b, ".4s\n", "addp ", $c, ".4s, ", $c, ".4s, ", $d, ".4s\n", "addp ",
            $a, ".4s, ", $a, ".4s, ", $c, ".4s\n",
        )
    };
}

/// One strip of each of the three rows at `{a0}`..`{a2}` by this half of the panel at `{w}`.
macro_rules! strip3 {
    () => {
        concat!(
            "ldr q0, [{a0}], #16\n",
            "ldr q1, [{a1}], #16\n",
            "ldr q2, [{a2}], #16\n",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], #64\n",
            "sdot v8.4s, v4.16b, v0.16b\n",
            "sdot v9.4s, v5.16b, v0.16b\n",
            "sdot v10.4s, v6.16b, v0.16b\n",
            "sdot v11.4s, v7.16b, v0.16b\n",
            "sdot v12.4s, v4.16b, v1.16b\n",
            "sdot v13.4s, v5.16b, v1.16b\n",
            "sdot v14.4s, v6.16b, v1.16b\n",
            "sdot v15.4s, v7.16b, v1.16b\n",
            "sdot v16.4s, v4.16b, v2.16b\n",
            "sdot v17.4s, v5.16b, v2.16b\n",
            "sdot v18.4s, v6.16b, v2.16b\n",
            "sdot v19.4s, v7.16b, v2.16b\n",
            // The half's other four columns, then on to the same half of the next strip.
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{w}], {skip}\n",
            "sdot v20.4s, v4.16b, v0.16b\n",
            "sdot v21.4s, v5.16b, v0.16b\n",
            "sdot v22.4s, v6.16b, v0.16b\n",
            "sdot v23.4s, v7.16b, v0.16b\n",
            "sdot v24.4s, v4.16b, v1.16b\n",
            "sdot v25.4s, v5.16b, v1.16b\n",
            "sdot v26.4s, v6.16b, v1.16b\n",
            "sdot v27.4s, v7.16b, v1.16b\n",
            "sdot v28.4s, v4.16b, v2.16b\n",
            "sdot v29.4s, v5.16b, v2.16b\n",
            "sdot v30.4s, v6.16b, v2.16b\n",
            "sdot v31.4s, v7.16b, v2.16b\n",
        )
    };
}

/// Σ_k a[r][k] · w[k][c] for three rows (`kp` bytes each, `stride` apart from `a`) by the
/// panel's 16 columns, into `out` (`[3][16]`), by SDOT. The image encoder's 50 rows: three rows
/// share each load of the weights, 12.4 multiply-adds an instruction where one row gets 11.1.
/// Registers: the rows' strips in v0-v2, four columns in v4-v7, 3 × 8 accumulators in v8-v31
/// (v8-v15 are saved by the compiler around the call).
///
/// # Safety
/// The CPU has FEAT_DotProd; `a` holds 2 × `stride` + `kp` bytes, `panel` `kp × 16`, `out` 48
/// values, `kp` a non-zero multiple of 16.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_3rows(a: &[i8], stride: usize, kp: usize, panel: &[i8], out: &mut [i32]) {
    let strips = kp / 16;
    debug_assert!(strips > 0 && kp % 16 == 0 && a.len() >= 2 * stride + kp);
    debug_assert!(panel.len() == kp * PANEL && out.len() == 3 * PANEL);
    for half in 0..2 {
        // SAFETY: per the caller: `strips` strips of each row, 128 bytes of each 256-byte strip
        // of the panel (this half's eight columns), 8 sums into each of the three output rows.
        unsafe {
            std::arch::asm!(
                "movi v8.16b, #0", "movi v9.16b, #0", "movi v10.16b, #0", "movi v11.16b, #0",
                "movi v12.16b, #0", "movi v13.16b, #0", "movi v14.16b, #0", "movi v15.16b, #0",
                "movi v16.16b, #0", "movi v17.16b, #0", "movi v18.16b, #0", "movi v19.16b, #0",
                "movi v20.16b, #0", "movi v21.16b, #0", "movi v22.16b, #0", "movi v23.16b, #0",
                "movi v24.16b, #0", "movi v25.16b, #0", "movi v26.16b, #0", "movi v27.16b, #0",
                "movi v28.16b, #0", "movi v29.16b, #0", "movi v30.16b, #0", "movi v31.16b, #0",
                "cbz {pairs}, 3f",
                "2:",
                strip3!(),
                strip3!(),
                "subs {pairs}, {pairs}, #1",
                "b.ne 2b",
                "3:",
                "cbz {odd}, 4f",
                strip3!(),
                "4:",
                sum4!("v8", "v9", "v10", "v11"),
                sum4!("v20", "v21", "v22", "v23"),
                sum4!("v12", "v13", "v14", "v15"),
                sum4!("v24", "v25", "v26", "v27"),
                sum4!("v16", "v17", "v18", "v19"),
                sum4!("v28", "v29", "v30", "v31"),
                "stp q8, q20, [{o}]",
                "stp q12, q24, [{o}, #64]",
                "stp q16, q28, [{o}, #128]",
                a0 = inout(reg) a.as_ptr() => _,
                a1 = inout(reg) a.as_ptr().add(stride) => _,
                a2 = inout(reg) a.as_ptr().add(2 * stride) => _,
                w = inout(reg) panel.as_ptr().add(half * 128) => _,
                pairs = inout(reg) strips / 2 => _,
                odd = in(reg) strips % 2,
                o = in(reg) out.as_mut_ptr().add(half * 8),
                skip = in(reg) 192usize,
                out("v0") _, out("v1") _, out("v2") _,
                out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nostack),
            );
        }
    }
}
