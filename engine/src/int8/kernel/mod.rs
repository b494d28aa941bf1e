//! int8 × int8 → i32 products of a few activation rows by a constant weight matrix.
//!
//! Why not tract's own kernels: in a decoding step every product has one row per beam, and tract
//! 0.23.9 runs int8 products on its 16×16 VNNI tile (x86) or 8×8 tiles (ARM) whatever the row
//! count, so with one row it does 8-16× the arithmetic, and around each product it widens,
//! requantizes and concatenates column blocks in separate passes. Here each weight panel is
//! loaded once and multiplied into every row, so a one-row product runs at the speed memory
//! delivers the weights.
//!
//! The weight `[k][n]` is cut into panels of [`PANEL`] output columns, in one of two layouts,
//! whichever the CPU's instructions read without shuffling ([`Layout`]). The caller subtracts
//! `zero × Σ_k w[k][j]` ([`PackedWeights::col_sums`]) from the raw sums afterwards.

mod packed;
mod portable;

// Assembled with NEON: the armv7 builds enable it (.cargo/config.toml); whether the CPU has it
// is checked at run time.
#[cfg(target_arch = "arm")]
mod armv7;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::ops::Range;

pub use packed::PackedWeights;

/// Output columns per panel.
pub const PANEL: usize = 16;
/// Rows multiplied by each weight load in the x86 kernel: a ClipCap prefix (10 positions) in
/// one pass over the weights, where 8 rows streamed every decoder weight twice for the first
/// token. Two panels × 12 rows of accumulators, the two weight vectors and a broadcast fill 27 of
/// the 32 vector registers.
pub const MAX_ROWS: usize = 12;

/// How a panel's weights lie in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// For each group of 4 consecutive `k`, the panel's 16 columns × 4 bytes: one 64-byte
    /// AVX-512 register, multiplied by one row's 4 activation bytes broadcast (`vpdpbusd`).
    /// Activations are fed as u8 (an i8 value + 128), which is what `vpdpbusd` multiplies by s8.
    Broadcast,
    /// For each strip of 16 consecutive `k`, the panel's 16 columns × 16 bytes: each column's
    /// strip is one NEON register, multiplied lane by lane by 16 bytes of one activation row
    /// (SDOT, or SMULL/SMLAL), and each column's lanes are summed at the end. Activations are
    /// fed as i8.
    Lanes,
}

impl Layout {
    /// Bytes of `k` in one group of a panel; `k` is padded to a multiple of it.
    pub fn depth(self) -> usize {
        match self {
            Layout::Broadcast => 4,
            Layout::Lanes => 16,
        }
    }
}

/// Activation rows as the kernel reads them, `k` padded with zeros to the layout's depth.
/// [`Layout::Broadcast`]: u8, in tiles of up to [`MAX_ROWS`] rows, each tile stored group by
/// group (`[k_padded / 4][tile rows][4]`), so one pointer walks a tile and every broadcast is at
/// a constant offset from it. [`Layout::Lanes`]: i8 rows one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activations {
    layout: Layout,
    rows: usize,
    kp: usize,
    data: Vec<u8>,
}

impl Activations {
    /// `src` holds `rows` rows of `k` bytes; each byte is XORed with `flip` (0x80 turns an i8
    /// into the u8 value + 128, and a u8 into the i8 value − 128).
    pub fn new(layout: Layout, src: &[u8], k: usize, flip: u8) -> Activations {
        let kp = k.next_multiple_of(layout.depth());
        let rows = src.len().checked_div(k).unwrap_or(0);
        let mut data = vec![0u8; rows * kp];
        for (r, row) in src.chunks_exact(k.max(1)).enumerate() {
            match layout {
                Layout::Broadcast => {
                    let (tile, rr, tile_rows) = Self::place(r, rows);
                    let base = tile * MAX_ROWS * kp + rr * 4;
                    for (g, x) in row.chunks(4).enumerate() {
                        let at = base + g * tile_rows * 4;
                        data[at..at + x.len()].iter_mut().zip(x).for_each(|(d, &v)| *d = v ^ flip);
                    }
                }
                Layout::Lanes => {
                    data[r * kp..r * kp + k].iter_mut().zip(row).for_each(|(d, &v)| *d = v ^ flip);
                }
            }
        }
        Activations { layout, rows, kp, data }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// [`Layout::Broadcast`]: row `r`'s tile, its place in the tile and the tile's row count.
    fn place(r: usize, rows: usize) -> (usize, usize, usize) {
        let tile = r / MAX_ROWS;
        (tile, r % MAX_ROWS, (rows - tile * MAX_ROWS).min(MAX_ROWS))
    }

    /// [`Layout::Broadcast`]: the tiles: first row, row count, bytes.
    #[cfg(target_arch = "x86_64")]
    fn tiles(&self) -> impl Iterator<Item = (usize, usize, &[u8])> {
        (0..self.rows).step_by(MAX_ROWS).map(|r0| {
            let n = (self.rows - r0).min(MAX_ROWS);
            (r0, n, &self.data[r0 * self.kp..(r0 + n) * self.kp])
        })
    }

    /// [`Layout::Lanes`]: row `r`, as i8.
    fn row(&self, r: usize) -> &[i8] {
        let row = &self.data[r * self.kp..(r + 1) * self.kp];
        // SAFETY: i8 and u8 have the same size and alignment, and every byte is a valid i8.
        unsafe { std::slice::from_raw_parts(row.as_ptr().cast(), row.len()) }
    }
}

/// Which implementation runs the products on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512 VNNI (`vpdpbusd`): Ice Lake and later Xeons, Zen 4 and later.
    Avx512Vnni,
    /// Other x86-64 CPUs with AVX2 (laptops, desktops, older servers).
    Avx2,
    /// aarch64 with FEAT_DotProd (SDOT): Cortex-A55/A76/A78 (Raspberry Pi 5, Jetson Orin).
    NeonDot,
    /// aarch64 without it: Cortex-A53/A57/A72 (Raspberry Pi 3/4, Jetson Nano).
    NeonWide,
    /// 32-bit ARM with NEON (the armhf build).
    Armv7Neon,
    /// Plain Rust: the reference the vector kernels are checked against, and the kernel the
    /// tests run where the CPU has none of the others.
    Portable,
}

impl Kernel {
    /// The vector kernel this CPU runs, or `None` where tract's own kernels are used instead
    /// (x86 without AVX2, 32-bit ARM built without NEON).
    /// `EDGECAP_INT8_KERNEL` chooses another, to compare them: `tract` (tract's kernels
    /// everywhere) or the [`name`](Kernel::name) of any kernel this CPU can run.
    pub fn detect() -> Option<Kernel> {
        #[cfg(test)]
        if let Some(chosen) = tests::CHOSEN.get() {
            return chosen;
        }
        match std::env::var("EDGECAP_INT8_KERNEL").as_deref() {
            Ok("tract") => None,
            Ok(name) => Self::available().into_iter().find(|k| k.name() == name).or_else(Self::native),
            Err(_) => Self::native(),
        }
    }

    /// Every kernel this CPU can run, the fastest last.
    pub fn available() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            kernels.push(Kernel::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        kernels.push(Kernel::NeonWide);
        kernels.extend(Self::native().filter(|k| !kernels.contains(k)));
        kernels
    }

    /// The fastest kernel this CPU has.
    pub fn native() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        let kernel =
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni") {
                Some(Kernel::Avx512Vnni)
            } else {
                std::arch::is_x86_feature_detected!("avx2").then_some(Kernel::Avx2)
            };
        #[cfg(target_arch = "aarch64")]
        let kernel =
            Some(if std::arch::is_aarch64_feature_detected!("dotprod") { Kernel::NeonDot } else { Kernel::NeonWide });
        #[cfg(target_arch = "arm")]
        let kernel = crate::platform::arm_has_neon().then_some(Kernel::Armv7Neon);
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
        let kernel = None;
        kernel
    }

    /// The name `edgecap info` prints and `EDGECAP_INT8_KERNEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::NeonDot => "neon-dot",
            Kernel::NeonWide => "neon-wide",
            Kernel::Armv7Neon => "armv7-neon",
            Kernel::Portable => "portable",
        }
    }

    pub fn layout(self) -> Layout {
        match self {
            Kernel::Avx512Vnni => Layout::Broadcast,
            Kernel::Avx2 | Kernel::NeonDot | Kernel::NeonWide | Kernel::Armv7Neon | Kernel::Portable => Layout::Lanes,
        }
    }

    /// Whether the kernel multiplies i8 activations (u8 otherwise).
    pub fn signed_activations(self) -> bool {
        self.layout() == Layout::Lanes
    }

    /// Products of the activation rows `a` by the panels `panels` of `w`. `out` holds, panel by
    /// panel, `a.rows()` × [`PANEL`] raw sums Σ_k a·w.
    pub fn run(self, a: &Activations, w: &PackedWeights, panels: Range<usize>, out: &mut [i32]) {
        let (rows, kp) = (a.rows(), w.k_padded());
        assert_eq!((a.layout, w.layout()), (self.layout(), self.layout()), "{self:?}: operands in another layout");
        assert_eq!(a.kp, kp, "activation rows of {} bytes, weight of {kp} rows", a.kp);
        assert_eq!(out.len(), panels.len() * rows * PANEL, "output is not {} panels of {rows} rows", panels.len());
        match self.layout() {
            #[cfg(target_arch = "x86_64")]
            Layout::Broadcast => self.run_broadcast(a, w, panels, out),
            #[cfg(not(target_arch = "x86_64"))]
            Layout::Broadcast => unreachable!("{self:?}: the broadcast layout is x86's"),
            Layout::Lanes => {
                // Row by row under each panel: the panel stays in the L1 cache for every row.
                for (p, out) in panels.zip(out.chunks_exact_mut(rows * PANEL)) {
                    let done = self.lanes_rows_by_three(a, w, p, out);
                    for (r, out) in out.chunks_exact_mut(PANEL).enumerate().skip(done) {
                        self.lanes_row(a.row(r), w, p, out);
                    }
                }
            }
        }
    }

    /// The first rows by panel `p` of `w`, three at a time, where the kernel has a three-row
    /// form (SDOT); returns how many rows it did.
    #[cfg(target_arch = "aarch64")]
    fn lanes_rows_by_three(self, a: &Activations, w: &PackedWeights, p: usize, out: &mut [i32]) -> usize {
        let threes = if self == Kernel::NeonDot { a.rows() / 3 } else { 0 };
        for t in 0..threes {
            let (r, kp) = (3 * t, a.kp);
            let rows = &a.data[r * kp..(r + 3) * kp];
            // SAFETY: `detect` chose SDOT after checking the CPU features; three rows of kp bytes
            // (i8 and u8 have one layout), a panel of kp × 16, 48 sums (lengths checked by `run`).
            unsafe {
                let rows = std::slice::from_raw_parts(rows.as_ptr().cast::<i8>(), rows.len());
                neon::dot_3rows(rows, kp, kp, w.panel(p), &mut out[r * PANEL..(r + 3) * PANEL]);
            }
        }
        3 * threes
    }

    #[cfg(not(target_arch = "aarch64"))]
    fn lanes_rows_by_three(self, _: &Activations, _: &PackedWeights, _: usize, _: &mut [i32]) -> usize {
        0
    }

    /// One row by panel `p` of `w`, in [`Layout::Lanes`].
    fn lanes_row(self, a: &[i8], w: &PackedWeights, p: usize, out: &mut [i32]) {
        let panel = w.panel(p);
        match self {
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `detect` chose this kernel after checking the CPU features; the lengths
            // were checked by `run` (kp is a non-zero multiple of 16: k ≥ 1).
            Kernel::NeonDot => unsafe { neon::dot_row(a, panel, out) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of aarch64; lengths as above.
            Kernel::NeonWide => unsafe {
                if w.no_min() {
                    neon::wide_row_paired(a, panel, out)
                } else {
                    neon::wide_row(a, panel, out)
                }
            },
            #[cfg(target_arch = "arm")]
            // SAFETY: `detect` found NEON in the CPU's capabilities; lengths as above.
            Kernel::Armv7Neon => unsafe { armv7::row(a, panel, out, w.no_min()) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this kernel after checking the CPU features; lengths as above.
            Kernel::Avx2 => unsafe { avx2::row(a, panel, out) },
            Kernel::Portable => portable::lanes_row(a, panel, out),
            other => unreachable!("{other:?} is not a kernel of this CPU's layout"),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn run_broadcast(self, a: &Activations, w: &PackedWeights, panels: Range<usize>, out: &mut [i32]) {
        let (rows, kp) = (a.rows(), w.k_padded());
        let per_panel = rows * PANEL;
        // Two panels at a time: each activation broadcast then feeds two products.
        for (p, out) in panels.step_by(2).zip(out.chunks_mut(2 * per_panel)) {
            let (first, second) = out.split_at_mut(per_panel);
            let second_panel = (!second.is_empty()).then(|| w.panel(p + 1));
            for (r0, n, tile) in a.tiles() {
                let out0 = &mut first[r0 * PANEL..(r0 + n) * PANEL];
                let out1 = second_panel.map(|_| &mut second[r0 * PANEL..(r0 + n) * PANEL]);
                match self {
                    // SAFETY: `detect` chose this kernel after checking the CPU features; the
                    // slices' lengths were checked by `run`.
                    Kernel::Avx512Vnni => unsafe { vnni::tile(tile, n, kp, (w.panel(p), second_panel), out0, out1) },
                    other => unreachable!("{other:?} does not read {:?}", Layout::Broadcast),
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::int8::pool::Pool;

    thread_local! {
        /// The kernel [`Kernel::detect`] returns on this thread, when set by [`with_kernel`].
        pub(super) static CHOSEN: Cell<Option<Option<Kernel>>> = const { Cell::new(None) };
    }

    /// Runs `f` with `kernel` as the one [`Kernel::detect`] gives on this thread (`None`:
    /// tract's products), whatever the CPU has.
    pub(crate) fn with_kernel<R>(kernel: Option<Kernel>, f: impl FnOnce() -> R) -> R {
        let before = CHOSEN.replace(Some(kernel));
        let result = f();
        CHOSEN.set(before);
        result
    }

    /// Runs `f` once with each kernel this CPU can run chosen ([`with_kernel`]): its own, the
    /// others it has the instructions for, and the portable one (the signed-activation path
    /// every ARM kernel takes, so tested on any CPU).
    pub(crate) fn for_each_kernel(f: impl Fn(Kernel)) {
        for kernel in Kernel::available() {
            eprintln!("kernel {kernel:?}");
            with_kernel(Some(kernel), || f(kernel));
        }
    }

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

    /// An activation byte as `kernel` multiplies it: u8 for the broadcast layout, i8 otherwise.
    fn value(kernel: Kernel, byte: u8) -> i32 {
        if kernel.signed_activations() {
            byte as i8 as i32
        } else {
            byte as i32
        }
    }

    /// Σ_k a[r][k] · w[k][j], straight from the unpacked matrices.
    fn naive(kernel: Kernel, a: &[u8], rows: usize, k: usize, w: &[i8], n: usize) -> Vec<i32> {
        let mut out = vec![0; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = (0..k).map(|kk| value(kernel, a[r * k + kk]) * w[kk * n + j] as i32).sum();
            }
        }
        out
    }

    /// Runs `kernel` over all panels of `w` (unpacked `[k][n]`) and returns row-major `[rows][n]`.
    fn product(kernel: Kernel, a: &[u8], rows: usize, w: &[i8], k: usize, n: usize) -> Vec<i32> {
        let w = PackedWeights::pack(kernel.layout(), w, k, n);
        let acts = Activations::new(kernel.layout(), a, k, 0);
        assert_eq!(acts.rows(), rows);
        let mut panels = vec![0; w.panels() * rows * PANEL];
        kernel.run(&acts, &w, 0..w.panels(), &mut panels);
        let mut out = vec![0; rows * n];
        for j in 0..n {
            for r in 0..rows {
                out[r * n + j] = panels[(j / PANEL) * rows * PANEL + r * PANEL + j % PANEL];
            }
        }
        out
    }

    const LAYOUTS: [Layout; 2] = [Layout::Broadcast, Layout::Lanes];

    #[test]
    fn packing_keeps_every_weight_and_sums_columns() {
        // Full groups and panels (the shuffled path) and partial ones at both edges.
        for (k, n) in [(11, 37), (40, 50)] {
            let w: Vec<i8> = lcg(1, k * n).into_iter().map(|v| v as i8).collect();
            for layout in LAYOUTS {
                let p = PackedWeights::pack(layout, &w, k, n);
                let depth = layout.depth();
                assert_eq!((p.k_padded(), p.panels()), (k.next_multiple_of(depth), n.div_ceil(PANEL)));
                for kk in 0..k {
                    for j in 0..n {
                        let at = (j / PANEL) * p.k_padded() * PANEL
                            + (kk / depth) * PANEL * depth
                            + (j % PANEL) * depth
                            + kk % depth;
                        assert_eq!(p.data()[at], w[kk * n + j], "{layout:?} k {kk} n {j}");
                    }
                }
                let total = |v: &[i8]| v.iter().map(|&v| v as i64).sum::<i64>();
                assert_eq!(total(p.data()), total(&w), "{layout:?}: padding is zero");
                for j in 0..n {
                    assert_eq!(p.col_sums()[j], (0..k).map(|kk| w[kk * n + j] as i32).sum::<i32>());
                }
                assert_eq!(p.no_min(), !w.contains(&i8::MIN));
            }
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
        for layout in LAYOUTS {
            assert_eq!(PackedWeights::pack_blocks(layout, k, &blocks, None), PackedWeights::pack(layout, &w, k, n));
        }
    }

    #[test]
    fn packing_on_a_pool_is_packing_on_one_thread() {
        // Several packing tasks (k 64: 1 KiB panels, 256 to a task), a panel straddling blocks.
        let (k, n) = (64, 9000);
        let w: Vec<i8> = lcg(5, k * n).into_iter().map(|v| v as i8).collect();
        let block = |c0: usize, c1: usize| columns(&w, k, n, c0..c1);
        let (a, b) = (block(0, 4001), block(4001, n));
        let blocks = [(&a[..], 4001), (&b[..], n - 4001)];
        for layout in LAYOUTS {
            let alone = PackedWeights::pack_blocks(layout, k, &blocks, None);
            for threads in [2, 3] {
                let pool = Pool::new(threads);
                assert_eq!(PackedWeights::pack_blocks(layout, k, &blocks, Some(&pool)), alone, "{threads} threads");
            }
            assert_eq!(alone.col_sums()[8999], (0..k).map(|kk| w[kk * n + 8999] as i32).sum::<i32>());
        }
    }

    #[test]
    fn kernels_match_the_naive_product() {
        // Odd sizes: k not a multiple of 4 or 16, n not of 16, row counts across the 12-row
        // tile; weights in ±127 (as quantized) and over all of i8 (−128: the unpaired path).
        for (rows, k, n) in
            [(1, 768, 50), (1, 5, 3), (3, 9, 17), (8, 64, 32), (10, 130, 33), (12, 20, 48), (13, 4, 16), (50, 36, 17)]
        {
            let a = lcg(rows as u64 * 31 + k as u64, rows * k);
            let all: Vec<i8> = lcg(n as u64, k * n).into_iter().map(|v| v as i8).collect();
            let symmetric: Vec<i8> = all.iter().map(|&v| v.max(-127)).collect();
            for w in [&all, &symmetric] {
                for kernel in Kernel::available() {
                    let want = naive(kernel, &a, rows, k, w, n);
                    assert_eq!(product(kernel, &a, rows, w, k, n), want, "{kernel:?} rows {rows} k {k} n {n}");
                }
            }
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        // Products at the ends of the range summed over k = 4096: far outside i16, inside i32;
        // the i16 pairs of the widening kernels at their limit (−128 · −127 twice = 32512) and,
        // with a −128 weight, past it (−128 · −128 twice = 32768: the unpaired path).
        let (rows, k, n) = (2, 4096, 16);
        for kernel in Kernel::available() {
            let low: u8 = if kernel.signed_activations() { 0x80 } else { 255 };
            for (a, w) in [(low, -128i8), (low, -127), (0x7f, 127), (low, 127)] {
                let a = vec![a; rows * k];
                let w = vec![w; k * n];
                let want = naive(kernel, &a, rows, k, &w, n);
                assert_eq!(product(kernel, &a, rows, &w, k, n), want, "{kernel:?} a {} w {}", a[0], w[0]);
            }
        }
    }
}
