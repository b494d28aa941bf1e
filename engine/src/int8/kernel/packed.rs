//! Constant int8 weights in the order a kernel reads them, with their column sums.

use super::{Layout, PANEL};
use crate::int8::pool::Pool;

/// Bytes of packed weight per packing task: whole panels, enough to outweigh handing out a task.
const PACK_CHUNK: usize = 256 << 10;

/// A constant int8 weight in panel order, with its column sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedWeights {
    layout: Layout,
    k: usize,
    n: usize,
    /// panels × (k_padded / depth) × PANEL × depth; padding rows and columns are zero.
    data: Vec<i8>,
    col_sums: Vec<i32>,
    /// No weight is −128, as `host-tools quantize` writes them (symmetric, ±127): a product of
    /// two int8 values then fits in ±16256, so two of them add up in an i16 without overflow.
    no_min: bool,
}

impl PackedWeights {
    /// Packs `w`, row-major `[k][n]` (ONNX MatMul's second operand).
    pub fn pack(layout: Layout, w: &[i8], k: usize, n: usize) -> PackedWeights {
        PackedWeights::pack_blocks(layout, k, &[(w, n)], None)
    }

    /// Packs blocks that lie side by side, `[k][n1 + n2 + ...]`: each is row-major `[k][n_i]`,
    /// given with its width. Read in place: joining them first cost a copy of the whole weight
    /// (38 MB for GPT-2's LM head) at every start. Packing is a good part of loading a bundle,
    /// so it shares the panels between the `pool`'s threads.
    pub fn pack_blocks(layout: Layout, k: usize, blocks: &[(&[i8], usize)], pool: Option<&Pool>) -> PackedWeights {
        for (w, width) in blocks {
            assert_eq!(w.len(), k * width, "weight block of {} values is not {k}×{width}", w.len());
        }
        let starts: Vec<usize> =
            blocks.iter().scan(0, |end, (_, width)| Some(std::mem::replace(end, *end + width))).collect();
        let n: usize = blocks.iter().map(|(_, width)| width).sum();
        // The block holding column c, and c's column in it.
        let locate = |c: usize| {
            let b = starts.partition_point(|&start| start <= c) - 1;
            (blocks[b], c - starts[b])
        };
        let depth = layout.depth();
        let panel_len = k.next_multiple_of(depth) * PANEL;
        let mut data = vec![0i8; n.div_ceil(PANEL) * panel_len];
        // Panel by panel, so that the writes are sequential (a weight of 50257 columns written
        // row by row would touch a new cache line for every value).
        let pack_panel = |p: usize, panel: &mut [i8]| {
            let c0 = p * PANEL;
            let width = PANEL.min(n - c0);
            let ((w, stride), at) = locate(c0);
            let whole = width == PANEL && at + PANEL <= stride;
            for (g, group) in panel.chunks_exact_mut(PANEL * depth).enumerate() {
                let k0 = g * depth;
                let rows = depth.min(k - k0);
                if whole && rows == depth {
                    layout.interleave(&w[k0 * stride + at..], stride, group);
                } else {
                    // Edges, and the few panels that straddle two blocks.
                    for (d, c) in (0..rows).flat_map(|d| (0..width).map(move |c| (d, c))) {
                        let ((w, stride), at) = locate(c0 + c);
                        group[c * depth + d] = w[(k0 + d) * stride + at];
                    }
                }
            }
        };
        let chunk_panels = PACK_CHUNK.div_ceil(panel_len).max(1);
        let pack_chunk = |i: usize, chunk: &mut [i8]| {
            for (j, panel) in chunk.chunks_exact_mut(panel_len).enumerate() {
                pack_panel(i * chunk_panels + j, panel);
            }
        };
        let mut col_sums = vec![0i32; n];
        let sum_chunk = |data: &[i8], i: usize, sums: &mut [i32]| {
            for (j, panel_sums) in sums.chunks_mut(PANEL).enumerate() {
                let p = i * chunk_panels + j;
                let panel = &data[p * panel_len..(p + 1) * panel_len];
                match layout {
                    Layout::Broadcast => sum_columns::<4>(panel, panel_sums),
                    Layout::Lanes => sum_columns::<16>(panel, panel_sums),
                }
            }
        };
        match pool {
            Some(pool) => {
                pool.for_each_chunk_mut(&mut data, chunk_panels * panel_len, pack_chunk);
                pool.for_each_chunk_mut(&mut col_sums, chunk_panels * PANEL, |i, sums| sum_chunk(&data, i, sums));
            }
            None => {
                data.chunks_mut(chunk_panels * panel_len).enumerate().for_each(|(i, c)| pack_chunk(i, c));
                col_sums.chunks_mut(chunk_panels * PANEL).enumerate().for_each(|(i, s)| sum_chunk(&data, i, s));
            }
        }
        // A minimum, not `contains`: it vectorises, where `contains` runs a word-at-a-time
        // memchr (~0.1 G instructions for a full-size bundle on a Cortex-A76, emulated).
        let no_min = data.iter().copied().min().is_none_or(|m| m > i8::MIN);
        PackedWeights { layout, k, n, data, col_sums, no_min }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// `k` rounded up to the layout's depth: the length of each activation row the kernel reads.
    pub fn k_padded(&self) -> usize {
        self.k.next_multiple_of(self.layout.depth())
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Σ_k w[k][j] for each column j.
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Whether no weight is −128 (see the field).
    pub fn no_min(&self) -> bool {
        self.no_min
    }

    pub(super) fn panel(&self, p: usize) -> &[i8] {
        let len = self.k_padded() * PANEL;
        &self.data[p * len..(p + 1) * len]
    }

    #[cfg(test)]
    pub(super) fn data(&self) -> &[i8] {
        &self.data
    }
}

/// Adds each column of a packed panel into `sums`: column c is bytes c·DEPTH.. of each group.
/// DEPTH is a constant so that each column's bytes are summed in a few vector instructions
/// (SADDLV for 16); a run-time depth left a loop set up for every 16 bytes, the better part of
/// packing.
fn sum_columns<const DEPTH: usize>(panel: &[i8], sums: &mut [i32]) {
    for group in panel.chunks_exact(PANEL * DEPTH) {
        for (s, column) in sums.iter_mut().zip(group.chunks_exact(DEPTH)) {
            let column: &[i8; DEPTH] = column.try_into().expect("chunks of DEPTH");
            *s += column.iter().map(|&v| v as i16).sum::<i16>() as i32;
        }
    }
}

impl Layout {
    /// One full group of a panel: `group[c * depth + d] = src[d * stride + c]` for the PANEL
    /// columns `c` and `depth` rows `d`. Packing is a good part of loading a bundle, hence the
    /// byte shuffles.
    fn interleave(self, src: &[i8], stride: usize, group: &mut [i8]) {
        let depth = self.depth();
        assert!(src.len() >= (depth - 1) * stride + PANEL && group.len() == PANEL * depth);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the assert bounds the four 16-byte loads (one per row) and the four stores.
            Layout::Broadcast => unsafe { interleave_sse2(src, stride, group) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: the assert bounds the sixteen 16-byte loads and the stores.
            Layout::Lanes => unsafe { transpose_neon(src, stride, group) },
            #[cfg(target_arch = "arm")]
            // SAFETY: as above; only the armv7 kernel reads this layout, after checking for NEON.
            Layout::Lanes if crate::platform::arm_has_neon() => unsafe { transpose_armv7(src, stride, group) },
            _ => {
                for (d, c) in (0..depth).flat_map(|d| (0..PANEL).map(move |c| (d, c))) {
                    group[c * depth + d] = src[d * stride + c];
                }
            }
        }
    }
}

/// [`Layout::Broadcast`]'s group: 4 rows of 16 bytes, paired bytewise, then the pairs paired.
#[cfg(target_arch = "x86_64")]
unsafe fn interleave_sse2(src: &[i8], stride: usize, group: &mut [i8]) {
    use std::arch::x86_64::*;
    unsafe {
        let row = |d: usize| _mm_loadu_si128(src.as_ptr().add(d * stride) as *const __m128i);
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        // Bytes of rows 0/1 and 2/3 paired, then the pairs paired: 4 bytes per column.
        let (lo01, hi01) = (_mm_unpacklo_epi8(r0, r1), _mm_unpackhi_epi8(r0, r1));
        let (lo23, hi23) = (_mm_unpacklo_epi8(r2, r3), _mm_unpackhi_epi8(r2, r3));
        let out = group.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(out, _mm_unpacklo_epi16(lo01, lo23));
        _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(lo01, lo23));
        _mm_storeu_si128(out.add(2), _mm_unpacklo_epi16(hi01, hi23));
        _mm_storeu_si128(out.add(3), _mm_unpackhi_epi16(hi01, hi23));
    }
}

/// [`Layout::Lanes`]' group: a 16×16 byte transpose, in four rounds of TRN1/TRN2 on ever wider
/// elements (bytes, halves, words, doublewords): after round `r`, each register holds runs of
/// 2^r rows of one column.
#[cfg(target_arch = "aarch64")]
unsafe fn transpose_neon(src: &[i8], stride: usize, group: &mut [i8]) {
    use std::arch::aarch64::*;
    unsafe {
        let r: [int8x16_t; 16] = std::array::from_fn(|d| vld1q_s8(src.as_ptr().add(d * stride)));
        // Round 1: a[2i] = even columns of rows 2i, 2i+1 (byte pairs); a[2i+1] = odd columns.
        let a: [int8x16_t; 16] = std::array::from_fn(|j| {
            let (x, y) = (r[j & !1], r[j | 1]);
            if j % 2 == 0 {
                vtrn1q_s8(x, y)
            } else {
                vtrn2q_s8(x, y)
            }
        });
        // Round 2, on halves: within each 4 rows, b[4i + c] = columns ≡ c (mod 4).
        let b: [int16x8_t; 16] = std::array::from_fn(|j| {
            let (base, c) = (j & !3, j & 3);
            let (x, y) = (vreinterpretq_s16_s8(a[base + (c & 1)]), vreinterpretq_s16_s8(a[base + 2 + (c & 1)]));
            if c < 2 {
                vtrn1q_s16(x, y)
            } else {
                vtrn2q_s16(x, y)
            }
        });
        // Round 3, on words: within each 8 rows, e[8i + c] = columns ≡ c (mod 8).
        let e: [int32x4_t; 16] = std::array::from_fn(|j| {
            let (base, c) = (j & !7, j & 7);
            let (x, y) = (vreinterpretq_s32_s16(b[base + (c & 3)]), vreinterpretq_s32_s16(b[base + 4 + (c & 3)]));
            if c < 4 {
                vtrn1q_s32(x, y)
            } else {
                vtrn2q_s32(x, y)
            }
        });
        // Round 4, on doublewords: rows 0-7 and 8-15 of column c side by side.
        let out = group.as_mut_ptr();
        for c in 0..16 {
            let (x, y) = (vreinterpretq_s64_s32(e[c & 7]), vreinterpretq_s64_s32(e[8 + (c & 7)]));
            let column = if c < 8 { vtrn1q_s64(x, y) } else { vtrn2q_s64(x, y) };
            vst1q_s8(out.add(c * 16), vreinterpretq_s8_s64(column));
        }
    }
}

/// [`transpose_neon`] on 32-bit ARM, in `asm!` (Rust's 32-bit NEON intrinsics are not stable):
/// the sixteen rows in q0-q15, VTRN on bytes, halves and words, then VSWP of the doublewords.
/// Packing with the scalar loop cost 1.2 G instructions per full-size bundle load (emulated).
///
/// # Safety
/// The CPU has NEON; `src` holds 15 × `stride` + 16 bytes, `group` 256.
#[cfg(target_arch = "arm")]
unsafe fn transpose_armv7(src: &[i8], stride: usize, group: &mut [i8]) {
    unsafe {
        std::arch::asm!(
            "vld1.8 {{d0, d1}}, [{src}], {stride}",
            "vld1.8 {{d2, d3}}, [{src}], {stride}",
            "vld1.8 {{d4, d5}}, [{src}], {stride}",
            "vld1.8 {{d6, d7}}, [{src}], {stride}",
            "vld1.8 {{d8, d9}}, [{src}], {stride}",
            "vld1.8 {{d10, d11}}, [{src}], {stride}",
            "vld1.8 {{d12, d13}}, [{src}], {stride}",
            "vld1.8 {{d14, d15}}, [{src}], {stride}",
            "vld1.8 {{d16, d17}}, [{src}], {stride}",
            "vld1.8 {{d18, d19}}, [{src}], {stride}",
            "vld1.8 {{d20, d21}}, [{src}], {stride}",
            "vld1.8 {{d22, d23}}, [{src}], {stride}",
            "vld1.8 {{d24, d25}}, [{src}], {stride}",
            "vld1.8 {{d26, d27}}, [{src}], {stride}",
            "vld1.8 {{d28, d29}}, [{src}], {stride}",
            "vld1.8 {{d30, d31}}, [{src}]",
            // Bytes of row pairs: q2i holds the even columns, q2i+1 the odd ones.
            "vtrn.8 q0, q1", "vtrn.8 q2, q3", "vtrn.8 q4, q5", "vtrn.8 q6, q7",
            "vtrn.8 q8, q9", "vtrn.8 q10, q11", "vtrn.8 q12, q13", "vtrn.8 q14, q15",
            // Halves within each four rows: q4i+c holds the columns = c (mod 4).
            "vtrn.16 q0, q2", "vtrn.16 q1, q3", "vtrn.16 q4, q6", "vtrn.16 q5, q7",
            "vtrn.16 q8, q10", "vtrn.16 q9, q11", "vtrn.16 q12, q14", "vtrn.16 q13, q15",
            // Words within each eight rows: q8i+c holds the columns = c (mod 8).
            "vtrn.32 q0, q4", "vtrn.32 q1, q5", "vtrn.32 q2, q6", "vtrn.32 q3, q7",
            "vtrn.32 q8, q12", "vtrn.32 q9, q13", "vtrn.32 q10, q14", "vtrn.32 q11, q15",
            // Rows 0-7 and 8-15 of each column side by side: q(c) = column c.
            "vswp d1, d16", "vswp d3, d18", "vswp d5, d20", "vswp d7, d22",
            "vswp d9, d24", "vswp d11, d26", "vswp d13, d28", "vswp d15, d30",
            "vst1.8 {{d0, d1, d2, d3}}, [{dst}]!",
            "vst1.8 {{d4, d5, d6, d7}}, [{dst}]!",
            "vst1.8 {{d8, d9, d10, d11}}, [{dst}]!",
            "vst1.8 {{d12, d13, d14, d15}}, [{dst}]!",
            "vst1.8 {{d16, d17, d18, d19}}, [{dst}]!",
            "vst1.8 {{d20, d21, d22, d23}}, [{dst}]!",
            "vst1.8 {{d24, d25, d26, d27}}, [{dst}]!",
            "vst1.8 {{d28, d29, d30, d31}}, [{dst}]",
            src = inout(reg) src.as_ptr() => _,
            dst = inout(reg) group.as_mut_ptr() => _,
            stride = in(reg) stride,
            out("q0") _, out("q1") _, out("q2") _, out("q3") _,
            out("q4") _, out("q5") _, out("q6") _, out("q7") _,
            out("q8") _, out("q9") _, out("q10") _, out("q11") _,
            out("q12") _, out("q13") _, out("q14") _, out("q15") _,
            options(nostack),
        );
    }
}
