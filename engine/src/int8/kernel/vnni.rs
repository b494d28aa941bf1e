//! The x86-64 kernel on [`Layout::Broadcast`](super::Layout::Broadcast): AVX-512 VNNI
//! (`vpdpbusd`, u8 × s8 summed in fours into i32 lanes), one or two panels by a tile of rows.

use std::arch::x86_64::*;

use super::PANEL;

/// Bytes of `k` that one `vpdpbusd` lane sums.
const DEPTH: usize = 4;

/// One or two panels times one tile of `rows` (1..=MAX_ROWS) rows.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 VNNI; `tile` holds `rows` × `kp` bytes, each panel
/// `kp` × 16, each output `rows` × 16 values.
#[target_feature(enable = "avx512f,avx512vnni")]
pub unsafe fn tile(
    tile: &[u8],
    rows: usize,
    kp: usize,
    panels: (&[i8], Option<&[i8]>),
    out0: &mut [i32],
    out1: Option<&mut [i32]>,
) {
    debug_assert!(tile.len() == rows * kp && panels.0.len() == kp * PANEL);
    let groups = kp / DEPTH;
    let a = tile.as_ptr();
    unsafe {
        if rows == 1 {
            // One row streams the weights: one panel at a time, contiguous in memory.
            one_row(a, groups, panels.0.as_ptr(), out0.as_mut_ptr());
            if let (Some(p), Some(o)) = (panels.1, out1) {
                one_row(a, groups, p.as_ptr(), o.as_mut_ptr());
            }
            return;
        }
        // A lone last panel runs as a pair with itself; the copy's sums are dropped.
        let mut spare = [0i32; super::MAX_ROWS * PANEL];
        let (p1, o1) = match (panels.1, out1) {
            (Some(p), Some(o)) => (p.as_ptr(), o.as_mut_ptr()),
            _ => (panels.0.as_ptr(), spare.as_mut_ptr()),
        };
        let (w, out) = ((panels.0.as_ptr(), p1), (out0.as_mut_ptr(), o1));
        // One monomorphised loop per row count keeps every accumulator in a register.
        match rows {
            2 => rows_n::<2>(a, groups, w, out),
            3 => rows_n::<3>(a, groups, w, out),
            4 => rows_n::<4>(a, groups, w, out),
            5 => rows_n::<5>(a, groups, w, out),
            6 => rows_n::<6>(a, groups, w, out),
            7 => rows_n::<7>(a, groups, w, out),
            8 => rows_n::<8>(a, groups, w, out),
            9 => rows_n::<9>(a, groups, w, out),
            10 => rows_n::<10>(a, groups, w, out),
            11 => rows_n::<11>(a, groups, w, out),
            _ => rows_n::<12>(a, groups, w, out),
        }
    }
}

#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn one_row(a: *const u8, groups: usize, w: *const i8, out: *mut i32) {
    // Two accumulators (even and odd groups): one dependent vpdpbusd chain would wait on the
    // instruction's latency rather than on memory.
    let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let x = |g: usize| unsafe { _mm512_set1_epi32(a.add(g * DEPTH).cast::<i32>().read_unaligned()) };
    let wv = |g: usize| unsafe { _mm512_loadu_si512(w.add(g * 64).cast()) };
    let mut g = 0;
    while g + 1 < groups {
        even = _mm512_dpbusd_epi32(even, x(g), wv(g));
        odd = _mm512_dpbusd_epi32(odd, x(g + 1), wv(g + 1));
        g += 2;
    }
    if g < groups {
        even = _mm512_dpbusd_epi32(even, x(g), wv(g));
    }
    unsafe { _mm512_storeu_si512(out.cast(), _mm512_add_epi32(even, odd)) };
}

#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn rows_n<const R: usize>(a: *const u8, groups: usize, w: (*const i8, *const i8), out: (*mut i32, *mut i32)) {
    let mut acc0 = [_mm512_setzero_si512(); R];
    let mut acc1 = [_mm512_setzero_si512(); R];
    unsafe {
        for g in 0..groups {
            let w0 = _mm512_loadu_si512(w.0.add(g * 64).cast());
            let w1 = _mm512_loadu_si512(w.1.add(g * 64).cast());
            let x = a.add(g * R * DEPTH);
            for r in 0..R {
                let x = _mm512_set1_epi32(x.add(r * DEPTH).cast::<i32>().read_unaligned());
                acc0[r] = _mm512_dpbusd_epi32(acc0[r], x, w0);
                acc1[r] = _mm512_dpbusd_epi32(acc1[r], x, w1);
            }
        }
        for r in 0..R {
            _mm512_storeu_si512(out.0.add(r * PANEL).cast(), acc0[r]);
            _mm512_storeu_si512(out.1.add(r * PANEL).cast(), acc1[r]);
        }
    }
}
