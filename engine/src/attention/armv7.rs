//! [`dot`](super::dot) and [`axpy`](super::axpy) on 32-bit ARM's NEON, in `asm!` (Rust's 32-bit
//! NEON intrinsics are not stable, and LLVM keeps float arithmetic off armv7's NEON because it
//! flushes subnormals to zero). Without them attention's row loop ran scalar VFP: 0.35 G of the
//! 2.4 G instructions of an int8 caption on a Cortex-A7 (emulated counts).
//!
//! Same lanes and order as [`portable_dot`](super::portable_dot): `VMLA.F32` rounds the product
//! before adding it (it is not fused; `VFMA` is), so the bits are those of x86 and aarch64 except
//! where a value is subnormal, which NEON flushes to zero.

/// Σ a·b over `a.len()` floats: sixteen lanes in four q registers, then the same tree.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let chunks = a.len().min(b.len()) / 16;
    let lanes = if chunks == 0 {
        0.0
    } else {
        // SAFETY: NEON is present (the caller checked HWCAP); the loop reads `chunks` × 16
        // floats of each slice, which both hold.
        unsafe { dot_chunks(a.as_ptr(), b.as_ptr(), chunks) }
    };
    let (a, b) = (&a[chunks * 16..], &b[chunks * 16..]);
    let tail = a.iter().zip(b).fold(0f32, |s, (x, y)| s + x * y);
    lanes + tail
}

/// The lanes' sum of `chunks` × 16 products: lanes l, l + 8 (halves), then l, l + 4 (quarters),
/// then (q0 + q2) + (q1 + q3).
///
/// # Safety
/// NEON; `a` and `b` readable for `chunks` × 16 floats, `chunks` > 0.
#[inline(always)]
unsafe fn dot_chunks(a: *const f32, b: *const f32, chunks: usize) -> f32 {
    let bits: u32;
    // SAFETY: per the caller.
    unsafe {
        std::arch::asm!(
            "vmov.i32 q8, #0",
            "vmov.i32 q9, #0",
            "vmov.i32 q10, #0",
            "vmov.i32 q11, #0",
            "2:",
            "vld1.32 {{d0-d3}}, [{a}]!",
            "vld1.32 {{d4-d7}}, [{a}]!",
            "vld1.32 {{d8-d11}}, [{b}]!",
            "vld1.32 {{d12-d15}}, [{b}]!",
            "vmla.f32 q8, q0, q4",
            "vmla.f32 q9, q1, q5",
            "vmla.f32 q10, q2, q6",
            "vmla.f32 q11, q3, q7",
            "subs {n}, {n}, #1",
            "bne 2b",
            "vadd.f32 q8, q8, q10",
            "vadd.f32 q9, q9, q11",
            "vadd.f32 q8, q8, q9",
            "vadd.f32 d16, d16, d17",
            "vpadd.f32 d16, d16, d16",
            "vmov.32 {bits}, d16[0]",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) chunks => _,
            bits = lateout(reg) bits,
            out("q0") _, out("q1") _, out("q2") _, out("q3") _,
            out("q4") _, out("q5") _, out("q6") _, out("q7") _,
            out("q8") _, out("q9") _, out("q10") _, out("q11") _,
            options(nostack, readonly),
        );
    }
    f32::from_bits(bits)
}

/// `y += p · x`, sixteen floats a loop turn, the rest one by one.
#[inline(always)]
pub fn axpy(p: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let chunks = n / 16;
    if chunks > 0 {
        // SAFETY: NEON is present (the caller checked HWCAP); the loop reads `chunks` × 16
        // floats of `x` and reads and writes as many of `y`, which both hold.
        unsafe { axpy_chunks(p, x.as_ptr(), y.as_mut_ptr(), chunks) }
    }
    for (y, x) in y[chunks * 16..n].iter_mut().zip(&x[chunks * 16..n]) {
        *y += p * x;
    }
}

/// # Safety
/// NEON; `x` readable and `y` readable and writable for `chunks` × 16 floats, `chunks` > 0.
#[inline(always)]
unsafe fn axpy_chunks(p: f32, x: *const f32, y: *mut f32, chunks: usize) {
    // SAFETY: per the caller; `y` is read through `{y}` and written back through `{o}`.
    unsafe {
        std::arch::asm!(
            "vdup.32 q8, {p}",
            "2:",
            "vld1.32 {{d0-d3}}, [{x}]!",
            "vld1.32 {{d4-d7}}, [{x}]!",
            "vld1.32 {{d8-d11}}, [{y}]!",
            "vld1.32 {{d12-d15}}, [{y}]!",
            "vmla.f32 q4, q0, q8",
            "vmla.f32 q5, q1, q8",
            "vmla.f32 q6, q2, q8",
            "vmla.f32 q7, q3, q8",
            "vst1.32 {{d8-d11}}, [{o}]!",
            "vst1.32 {{d12-d15}}, [{o}]!",
            "subs {n}, {n}, #1",
            "bne 2b",
            p = in(reg) p.to_bits(),
            x = inout(reg) x => _,
            y = inout(reg) y.cast_const() => _,
            o = inout(reg) y => _,
            n = inout(reg) chunks => _,
            out("q0") _, out("q1") _, out("q2") _, out("q3") _,
            out("q4") _, out("q5") _, out("q6") _, out("q7") _, out("q8") _,
            options(nostack),
        );
    }
}
