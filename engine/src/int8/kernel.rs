//! int8 × int8 → i32 products of a few activation rows by a constant weight matrix.
//!
//! Why not tract's own kernel: in a decoding step every product has one row per beam, and tract
//! 0.23.9 runs int8 products on its 16×16 VNNI tile whatever the row count, so with one row it
//! does 16× the arithmetic and streams the weights at ~9 GB/s, slower than its fp32 vector
//! kernel. Here each weight panel is loaded once and multiplied into up to [`MAX_ROWS`] rows, so
//! a one-row product runs at the speed memory delivers the weights.
//!
//! Layout: the weight `[k][n]` is cut into panels of [`PANEL`] output columns; a panel holds, for
//! each group of [`DEPTH`] consecutive `k`, its 16 columns × 4 bytes (one 64-byte register). The
//! activations are fed as u8 (an i8 value + 128), which is what VNNI's `vpdpbusd` multiplies by
//! s8; the caller subtracts `zero × Σ_k w[k][j]` ([`PackedWeights::col_sums`]) afterwards.

use std::ops::Range;

use super::pool::Pool;

/// Output columns per panel: one AVX-512 register of i32 accumulators.
pub const PANEL: usize = 16;
/// Bytes of `k` that one `vpdpbusd` lane sums.
pub const DEPTH: usize = 4;
/// Rows multiplied by each weight load: a ClipCap prefix (10 positions) in one pass over the
/// weights, where 8 rows streamed every decoder weight twice for the first token. Two panels
/// × 12 rows of accumulators, the two weight vectors and a broadcast fill 27 of the 32 vector
/// registers.
pub const MAX_ROWS: usize = 12;
/// Bytes of packed weight per packing task: whole panels, enough to outweigh handing out a task.
const PACK_CHUNK: usize = 256 << 10;

/// A constant int8 weight in panel order, with its column sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    /// panels × (k_padded / DEPTH) × PANEL × DEPTH; padding rows and columns are zero.
    data: Vec<i8>,
    col_sums: Vec<i32>,
}

impl PackedWeights {
    /// Packs `w`, row-major `[k][n]` (ONNX MatMul's second operand).
    pub fn pack(w: &[i8], k: usize, n: usize) -> PackedWeights {
        PackedWeights::pack_blocks(k, &[(w, n)], None)
    }

    /// Packs blocks that lie side by side, `[k][n1 + n2 + ...]`: each is row-major `[k][n_i]`,
    /// given with its width. Read in place: joining them first cost a copy of the whole weight
    /// (38 MB for GPT-2's LM head) at every start. Packing is a good part of loading a bundle,
    /// so it shares the panels between the `pool`'s threads.
    pub fn pack_blocks(k: usize, blocks: &[(&[i8], usize)], pool: Option<&Pool>) -> PackedWeights {
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
        let panel_len = k.next_multiple_of(DEPTH) * PANEL;
        let mut data = vec![0i8; n.div_ceil(PANEL) * panel_len];
        // Panel by panel, so that the writes are sequential (a weight of 50257 columns written
        // row by row would touch a new cache line for every value).
        let pack_panel = |p: usize, panel: &mut [i8]| {
            let c0 = p * PANEL;
            let width = PANEL.min(n - c0);
            let ((w, stride), at) = locate(c0);
            let whole = width == PANEL && at + PANEL <= stride;
            for (g, group) in panel.chunks_exact_mut(PANEL * DEPTH).enumerate() {
                let k0 = g * DEPTH;
                let depth = DEPTH.min(k - k0);
                if whole && depth == DEPTH {
                    interleave(&w[k0 * stride + at..], stride, group);
                } else {
                    // Edges, and the few panels that straddle two blocks.
                    for (d, c) in (0..depth).flat_map(|d| (0..width).map(move |c| (d, c))) {
                        let ((w, stride), at) = locate(c0 + c);
                        group[c * DEPTH + d] = w[(k0 + d) * stride + at];
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
        // Column sums from the packed panels: a panel's column c is bytes c·DEPTH.. of each group.
        let sum_chunk = |data: &[i8], i: usize, sums: &mut [i32]| {
            for (j, panel_sums) in sums.chunks_mut(PANEL).enumerate() {
                let p = i * chunk_panels + j;
                for group in data[p * panel_len..(p + 1) * panel_len].chunks_exact(PANEL * DEPTH) {
                    for (s, column) in panel_sums.iter_mut().zip(group.chunks_exact(DEPTH)) {
                        *s += column.iter().map(|&v| v as i32).sum::<i32>();
                    }
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
        PackedWeights { k, n, data, col_sums }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// `k` rounded up to [`DEPTH`]: the length of each activation row the kernel reads.
    pub fn k_padded(&self) -> usize {
        self.k.next_multiple_of(DEPTH)
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Σ_k w[k][j] for each column j.
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    fn panel(&self, p: usize) -> &[i8] {
        let len = self.k_padded() * PANEL;
        &self.data[p * len..(p + 1) * len]
    }
}

/// One full group of a panel: `group[c * DEPTH + d] = src[d * stride + c]` for the PANEL columns
/// `c` and DEPTH rows `d`. Packing is a good part of loading a bundle, hence the byte shuffles.
fn interleave(src: &[i8], stride: usize, group: &mut [i8]) {
    assert!(src.len() >= (DEPTH - 1) * stride + PANEL && group.len() == PANEL * DEPTH);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the assert bounds the four 16-byte loads (one per row) and the four stores.
    unsafe {
        use std::arch::x86_64::*;
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
    #[cfg(not(target_arch = "x86_64"))]
    for (d, c) in (0..DEPTH).flat_map(|d| (0..PANEL).map(move |c| (d, c))) {
        group[c * DEPTH + d] = src[d * stride + c];
    }
}

/// Activation rows as the kernel reads them: u8, in tiles of up to [`MAX_ROWS`] rows, each tile
/// stored group by group (`[k_padded / DEPTH][tile rows][DEPTH]`), so one pointer walks a tile
/// and every broadcast is at a constant offset from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activations {
    rows: usize,
    kp: usize,
    data: Vec<u8>,
}

impl Activations {
    /// `src` holds `rows` rows of `k` bytes; each byte is XORed with `flip` (0x80 turns an i8
    /// into the u8 value + 128 the kernel multiplies).
    pub fn new(src: &[u8], k: usize, flip: u8) -> Activations {
        let kp = k.next_multiple_of(DEPTH);
        let rows = src.len().checked_div(k).unwrap_or(0);
        let mut data = vec![0u8; rows * kp];
        for (r, row) in src.chunks_exact(k.max(1)).enumerate() {
            let (tile, rr, tile_rows) = Self::place(r, rows);
            let base = tile * MAX_ROWS * kp + rr * DEPTH;
            for (g, x) in row.chunks(DEPTH).enumerate() {
                let at = base + g * tile_rows * DEPTH;
                data[at..at + x.len()].iter_mut().zip(x).for_each(|(d, &v)| *d = v ^ flip);
            }
        }
        Activations { rows, kp, data }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r`'s tile, its place in the tile and the tile's row count.
    fn place(r: usize, rows: usize) -> (usize, usize, usize) {
        let tile = r / MAX_ROWS;
        (tile, r % MAX_ROWS, (rows - tile * MAX_ROWS).min(MAX_ROWS))
    }

    /// The tiles: first row, row count, bytes.
    fn tiles(&self) -> impl Iterator<Item = (usize, usize, &[u8])> {
        (0..self.rows).step_by(MAX_ROWS).map(|r0| {
            let n = (self.rows - r0).min(MAX_ROWS);
            (r0, n, &self.data[r0 * self.kp..(r0 + n) * self.kp])
        })
    }
}

/// Which implementation runs the products on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI (`vpdpbusd`): Ice Lake and later Xeons, Zen 4 and later.
    Avx512Vnni,
    /// Plain Rust, for tests: the reference the vector kernels are checked against.
    Portable,
}

impl Kernel {
    /// The vector kernel this CPU runs, or `None` where tract's own kernels are used instead
    /// (no kernel here has been measured faster there yet: AVX2 without VNNI, ARM).
    /// `EDGECAP_INT8_KERNEL=tract` chooses tract's kernels everywhere, to compare the two.
    pub fn detect() -> Option<Kernel> {
        if std::env::var("EDGECAP_INT8_KERNEL").is_ok_and(|v| v == "tract") {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni") {
            return Some(Kernel::Avx512Vnni);
        }
        None
    }

    /// Products of the activation rows `a` by the panels `panels` of `w`. `out` holds, panel by
    /// panel, `a.rows()` × [`PANEL`] raw sums Σ_k a·w.
    pub fn run(self, a: &Activations, w: &PackedWeights, panels: Range<usize>, out: &mut [i32]) {
        let (rows, kp) = (a.rows(), w.k_padded());
        assert_eq!(a.kp, kp, "activation rows of {} bytes, weight of {kp} rows", a.kp);
        assert_eq!(out.len(), panels.len() * rows * PANEL, "output is not {} panels of {rows} rows", panels.len());
        let per_panel = rows * PANEL;
        // Two panels at a time: each activation broadcast then feeds two products.
        for (p, out) in panels.step_by(2).zip(out.chunks_mut(2 * per_panel)) {
            let (first, second) = out.split_at_mut(per_panel);
            let second_panel = (!second.is_empty()).then(|| w.panel(p + 1));
            for (r0, n, tile) in a.tiles() {
                let out0 = &mut first[r0 * PANEL..(r0 + n) * PANEL];
                let out1 = second_panel.map(|_| &mut second[r0 * PANEL..(r0 + n) * PANEL]);
                match self {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `detect` chose this kernel after checking the CPU features; the
                    // slices' lengths were checked above.
                    Kernel::Avx512Vnni => unsafe { vnni::tile(tile, n, kp, (w.panel(p), second_panel), out0, out1) },
                    #[cfg(not(target_arch = "x86_64"))]
                    Kernel::Avx512Vnni => unreachable!("AVX-512 is x86_64 only"),
                    Kernel::Portable => {
                        portable_tile(tile, n, w.panel(p), out0);
                        if let (Some(panel), Some(out1)) = (second_panel, out1) {
                            portable_tile(tile, n, panel, out1);
                        }
                    }
                }
            }
        }
    }
}

/// One panel times one tile of `rows` rows.
fn portable_tile(tile: &[u8], rows: usize, panel: &[i8], out: &mut [i32]) {
    out.fill(0);
    for (x, w) in tile.chunks_exact(rows * DEPTH).zip(panel.chunks_exact(PANEL * DEPTH)) {
        for (x, acc) in x.chunks_exact(DEPTH).zip(out.chunks_exact_mut(PANEL)) {
            for (acc, w) in acc.iter_mut().zip(w.chunks_exact(DEPTH)) {
                *acc += x.iter().zip(w).map(|(&x, &w)| x as i32 * w as i32).sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{DEPTH, PANEL};

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
    unsafe fn rows_n<const R: usize>(
        a: *const u8,
        groups: usize,
        w: (*const i8, *const i8),
        out: (*mut i32, *mut i32),
    ) {
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (a 64-bit LCG's top byte).
    pub(crate) fn lcg(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    /// Σ_k a[r][k] · w[k][j], straight from the unpacked matrices.
    fn naive(a: &[u8], rows: usize, k: usize, w: &[i8], n: usize) -> Vec<i32> {
        let mut out = vec![0; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = (0..k).map(|kk| a[r * k + kk] as i32 * w[kk * n + j] as i32).sum();
            }
        }
        out
    }

    /// Runs `kernel` over all panels and returns row-major `[rows][n]`.
    fn product(kernel: Kernel, a: &[u8], rows: usize, w: &PackedWeights) -> Vec<i32> {
        let n = w.n();
        let acts = Activations::new(a, w.k(), 0);
        assert_eq!(acts.rows(), rows);
        let mut panels = vec![0; w.panels() * rows * PANEL];
        kernel.run(&acts, w, 0..w.panels(), &mut panels);
        let mut out = vec![0; rows * n];
        for j in 0..n {
            for r in 0..rows {
                out[r * n + j] = panels[(j / PANEL) * rows * PANEL + r * PANEL + j % PANEL];
            }
        }
        out
    }

    #[test]
    fn packing_keeps_every_weight_and_sums_columns() {
        // Full groups and panels (the shuffled path) and partial ones at both edges.
        let (k, n) = (11, 37);
        let w: Vec<i8> = lcg(1, k * n).into_iter().map(|v| v as i8).collect();
        let p = PackedWeights::pack(&w, k, n);
        assert_eq!((p.k_padded(), p.panels()), (12, 3));
        for kk in 0..k {
            for j in 0..n {
                let at = (j / PANEL) * p.k_padded() * PANEL
                    + (kk / DEPTH) * PANEL * DEPTH
                    + (j % PANEL) * DEPTH
                    + kk % DEPTH;
                assert_eq!(p.data[at], w[kk * n + j], "k {kk} n {j}");
            }
        }
        assert_eq!(p.data.iter().map(|&v| v as i64).sum::<i64>(), w.iter().map(|&v| v as i64).sum::<i64>());
        for j in 0..n {
            assert_eq!(p.col_sums()[j], (0..k).map(|kk| w[kk * n + j] as i32).sum::<i32>());
        }
    }

    /// Columns `cols` of the row-major `[k][n]` weight `w`, as a row-major block of their own.
    fn columns(w: &[i8], k: usize, n: usize, cols: Range<usize>) -> Vec<i8> {
        (0..k).flat_map(|kk| w[kk * n + cols.start..kk * n + cols.end].to_vec()).collect()
    }

    #[test]
    fn blocks_side_by_side_are_the_whole_matrix() {
        let (k, n) = (9, 40);
        let w: Vec<i8> = lcg(3, k * n).into_iter().map(|v| v as i8).collect();
        let block = |c0: usize, c1: usize| columns(&w, k, n, c0..c1);
        let (a, b, c) = (block(0, 13), block(13, 30), block(30, 40));
        let blocks = [(&a[..], 13), (&b[..], 17), (&c[..], 10)];
        assert_eq!(PackedWeights::pack_blocks(k, &blocks, None), PackedWeights::pack(&w, k, n));
    }

    #[test]
    fn packing_on_a_pool_is_packing_on_one_thread() {
        // Several packing tasks (k 64: 1 KiB panels, 256 to a task), a panel straddling blocks.
        let (k, n) = (64, 9000);
        let w: Vec<i8> = lcg(5, k * n).into_iter().map(|v| v as i8).collect();
        let block = |c0: usize, c1: usize| columns(&w, k, n, c0..c1);
        let (a, b) = (block(0, 4001), block(4001, n));
        let blocks = [(&a[..], 4001), (&b[..], n - 4001)];
        let alone = PackedWeights::pack_blocks(k, &blocks, None);
        for threads in [2, 3] {
            let pool = Pool::new(threads);
            assert_eq!(PackedWeights::pack_blocks(k, &blocks, Some(&pool)), alone, "{threads} threads");
        }
        assert_eq!(alone.col_sums()[8999], (0..k).map(|kk| w[kk * n + 8999] as i32).sum::<i32>());
    }

    #[test]
    fn kernels_match_the_naive_product() {
        let mut kernels = vec![Kernel::Portable];
        kernels.extend(Kernel::detect());
        // Odd sizes: k not a multiple of 4 or 8, n not of 16, row counts across the 12-row tile.
        for (rows, k, n) in
            [(1, 768, 50), (1, 5, 3), (3, 9, 17), (8, 64, 32), (10, 130, 33), (12, 20, 48), (13, 4, 16), (50, 36, 17)]
        {
            let a = lcg(rows as u64 * 31 + k as u64, rows * k);
            let w: Vec<i8> = lcg(n as u64, k * n).into_iter().map(|v| v as i8).collect();
            let packed = PackedWeights::pack(&w, k, n);
            let want = naive(&a, rows, k, &w, n);
            for &kernel in &kernels {
                assert_eq!(product(kernel, &a, rows, &packed), want, "{kernel:?} rows {rows} k {k} n {n}");
            }
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // 255 × -128 summed over k = 4096: far outside i16, inside i32.
        let (rows, k, n) = (2, 4096, 16);
        let a = vec![255u8; rows * k];
        let w = vec![-128i8; k * n];
        let packed = PackedWeights::pack(&w, k, n);
        let mut kernels = vec![Kernel::Portable];
        kernels.extend(Kernel::detect());
        for kernel in kernels {
            assert!(product(kernel, &a, rows, &packed).iter().all(|&v| v == 255 * -128 * k as i32), "{kernel:?}");
        }
    }
}
