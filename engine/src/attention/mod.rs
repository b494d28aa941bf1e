//! Attention as one operator: `softmax(q·kᵀ + bias)·v` for every batch item and head.
//!
//! Why: tract 0.23.9 runs the attention of a decoding step as some fifteen operators per layer
//! (two packed matrix products of 1×64 by 64×T, the packing of each operand, the mask, the
//! softmax, reshapes), ~0.16 ms a layer on the benchmark machine, a fifth of an int8 step, for
//! a few hundred thousand multiply-adds. As one loop over rows it costs a few microseconds.
//!
//! `fuse::attention` finds the pattern in a decluttered graph and puts this operator in its
//! place.

use tract_onnx::tract_hir::internal::*;

/// What an axis of an attention operand is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    /// An axis every operand shares (batch, head), numbered in the scores' order.
    Group(usize),
    /// The query position in `q`, the scores and the output; the key position in `k` and `v`.
    Position,
    /// The head's channels: contracted between `q` and `k`, kept from `v` in the output.
    Channel,
    /// An axis of size 1 (a batch of one that tract dropped from the scores).
    Unit,
}

/// The role of each axis of an operand. The channel axis is the last (its stride is 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Layout(pub(crate) TVec<Role>);

impl Layout {
    pub(crate) fn new(roles: TVec<Role>, groups: usize) -> Option<Layout> {
        let count = |r: Role| roles.iter().filter(|&&x| x == r).count();
        let ok = roles.last() == Some(&Role::Channel)
            && count(Role::Channel) == 1
            && count(Role::Position) == 1
            && (0..groups).all(|g| count(Role::Group(g)) == 1);
        ok.then_some(Layout(roles))
    }

    /// Where (group 0, group 1, position) sit: an axis each, `None` for a missing group.
    fn slots(&self) -> [Option<usize>; 3] {
        let at = |r: Role| self.0.iter().position(|&x| x == r);
        [at(Role::Group(0)), at(Role::Group(1)), at(Role::Position)]
    }

    /// Sizes along (group 0, group 1, position) of an operand of `shape` (a missing group: 1).
    fn sizes<D: Clone + From<usize>>(&self, shape: &[D]) -> [D; 3] {
        self.slots().map(|axis| axis.map_or(D::from(1), |a| shape[a].clone()))
    }

    /// Strides along (group 0, group 1, position) of a contiguous tensor of `shape`, and the
    /// sizes.
    fn strides(&self, shape: &[usize]) -> TractResult<([usize; 3], [usize; 3])> {
        ensure!(shape.len() == self.0.len(), "FusedAttention: operand {shape:?} for axes {:?}", self.0);
        for (axis, role) in self.0.iter().enumerate() {
            ensure!(*role != Role::Unit || shape[axis] == 1, "FusedAttention: axis {axis} of {shape:?} is not 1");
        }
        let natural = Tensor::natural_strides(shape);
        let strides = self.slots().map(|axis| axis.map_or(0, |a| natural[a] as usize));
        Ok((strides, self.sizes(shape)))
    }

    /// The output shape for these (group 0, group 1, position) sizes and `width` channels.
    fn shape<D: Clone + From<usize>>(&self, sizes: [D; 3], width: D) -> TVec<D> {
        self.0
            .iter()
            .map(|role| match role {
                Role::Group(g) => sizes[*g].clone(),
                Role::Position => sizes[2].clone(),
                Role::Channel => width.clone(),
                Role::Unit => D::from(1),
            })
            .collect()
    }
}

/// `softmax(q·kᵀ + bias)·v`, the softmax over key positions; `q` is already scaled.
/// Inputs: q, k, v and optionally the bias, which broadcasts against the scores
/// `[groups.., query, key]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FusedAttention {
    pub(crate) q: Layout,
    pub(crate) k: Layout,
    pub(crate) v: Layout,
    pub(crate) out: Layout,
    /// Group axes of the scores (0 to 2).
    pub(crate) groups: usize,
}

impl Op for FusedAttention {
    fn name(&self) -> StaticName {
        "FusedAttention".into()
    }

    op_as_typed_op!();
}

impl EvalOp for FusedAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let k = Operand::of(&self.k, &inputs[1])?;
        let v = Operand::of(&self.v, &inputs[2])?;
        Ok(tvec!(self.attend(&inputs[0], k, v, inputs.get(3).map(|b| &**b))?.into_tvalue()))
    }
}

/// An attention operand: its values and, along (group 0, group 1, position), strides and sizes.
pub(crate) struct Operand<'a> {
    pub values: &'a [f32],
    pub strides: [usize; 3],
    pub sizes: [usize; 3],
    /// Channels per position (the last axis; stride 1).
    pub channels: usize,
}

impl<'a> Operand<'a> {
    fn of(layout: &Layout, t: &'a Tensor) -> TractResult<Operand<'a>> {
        ensure!(t.datum_type() == f32::datum_type(), "FusedAttention: operand of type {:?}", t.datum_type());
        let (strides, sizes) = layout.strides(t.shape())?;
        Ok(Operand { values: plain(t)?, strides, sizes, channels: t.shape()[t.rank() - 1] })
    }
}

impl FusedAttention {
    /// Whether k and v are [group 0, group 1, position, channel], the layout a
    /// `kv_cache::LayerCache` keeps its keys and values in.
    pub(crate) fn reads_heads_by_position(&self) -> bool {
        let heads = [Role::Group(0), Role::Group(1), Role::Position, Role::Channel];
        self.groups == 2 && self.k.0[..] == heads && self.v.0[..] == heads
    }

    /// The attention of `q` over keys `k` and values `v`, plus `bias` if any.
    pub(crate) fn attend(&self, q: &Tensor, k: Operand, v: Operand, bias: Option<&Tensor>) -> TractResult<Tensor> {
        let q = Operand::of(&self.q, q)?;
        let (depth, width) = (q.channels, v.channels);
        ensure!(
            k.channels == depth && k.sizes == v.sizes && q.sizes[..2] == k.sizes[..2],
            "FusedAttention: q {:?}x{depth}, k {:?}x{}, v {:?}x{width} do not go together",
            q.sizes,
            k.sizes,
            k.channels,
            v.sizes
        );
        let [g0, g1, queries] = q.sizes;
        let keys = k.sizes[2];
        let bias = match bias {
            Some(b) => Some(Bias::new(b, self.groups, [g0, g1, queries, keys])?),
            None => None,
        };
        let out_shape = self.out.shape(q.sizes, width);
        let (out_strides, _) = self.out.strides(&out_shape)?;
        let heads = Heads { q, k, v, bias };
        // Head by head into a contiguous [head][query][channel] buffer, shared between the
        // threads when there is enough work (the encoder's 50 queries, not a decoding step's one).
        let mut rows = vec![0f32; g0 * g1 * queries * width];
        let run = |head: usize, chunk: &mut [f32]| heads.run(head / g1, head % g1, chunk);
        let pool = crate::int8::pool::current().filter(|_| g0 * g1 * queries * keys * depth >= THREADED_MACS);
        match pool {
            Some(pool) => pool.for_each_chunk_mut(&mut rows, queries * width, run),
            None => rows.chunks_mut(queries * width).enumerate().for_each(|(h, c)| run(h, c)),
        }
        let mut out = Tensor::zero::<f32>(&out_shape)?;
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            for (head, chunk) in rows.chunks_exact(queries * width).enumerate() {
                let (a, b) = (head / g1, head % g1);
                for (i, row) in chunk.chunks_exact(width).enumerate() {
                    let at = a * out_strides[0] + b * out_strides[1] + i * out_strides[2];
                    out[at..at + width].copy_from_slice(row);
                }
            }
        }
        Ok(out)
    }
}

/// Attentions of at least this many multiply-adds (scores alone) share the int8 pool's threads.
const THREADED_MACS: usize = 1 << 18;

/// One evaluation's operands, read head by head.
struct Heads<'a> {
    q: Operand<'a>,
    k: Operand<'a>,
    v: Operand<'a>,
    bias: Option<Bias<'a>>,
}

impl Heads<'_> {
    /// Head (a, b)'s output rows, `[query][channel]`, into `out`; compiled for the widest
    /// vectors this CPU has (the baseline x86-64 build would use 4-lane SSE).
    fn run(&self, a: usize, b: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { self.run_avx512(a, b, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { self.run_avx2(a, b, out) };
            }
        }
        self.rows(a, b, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, a: usize, b: usize, out: &mut [f32]) {
        self.rows(a, b, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, a: usize, b: usize, out: &mut [f32]) {
        self.rows(a, b, out)
    }

    #[inline(always)]
    fn rows(&self, a: usize, b: usize, out: &mut [f32]) {
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let (depth, width) = (q.channels, v.channels);
        let at = |o: &Operand, pos: usize| a * o.strides[0] + b * o.strides[1] + pos * o.strides[2];
        let mut scores = vec![0f32; k.sizes[2]];
        for (i, row) in out.chunks_exact_mut(width).enumerate() {
            let q_row = &q.values[at(q, i)..][..depth];
            #[cfg(target_arch = "aarch64")]
            if depth == neon::HEAD && width == neon::HEAD {
                neon::scores(q_row, k.values, |j| at(k, j), &mut scores);
                self.normalise(&mut scores, a, b, i);
                neon::context(&scores, v.values, |j| at(v, j), row);
                continue;
            }
            for (j, score) in scores.iter_mut().enumerate() {
                *score = dot(q_row, &k.values[at(k, j)..][..depth]);
            }
            self.normalise(&mut scores, a, b, i);
            row.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                axpy(p, &v.values[at(v, j)..][..width], row);
            }
        }
    }

    /// Query `i`'s scores plus the bias, then their softmax.
    #[inline(always)]
    fn normalise(&self, scores: &mut [f32], a: usize, b: usize, i: usize) {
        if let Some(bias) = &self.bias {
            bias.add_to(scores, a, b, i);
        }
        softmax(scores);
    }
}

fn plain(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

/// The additive bias, read with a zero stride along each axis it broadcasts.
struct Bias<'a> {
    values: &'a [f32],
    /// Strides along (group 0, group 1, query, key).
    strides: [usize; 4],
}

impl<'a> Bias<'a> {
    /// `t` in the scores' layout, `[groups.., query, key]`; `sizes` are the scores' sizes along
    /// (group 0, group 1, query, key).
    fn new(t: &'a Tensor, groups: usize, sizes: [usize; 4]) -> TractResult<Bias<'a>> {
        let slots: Vec<usize> = (0..groups).chain([2, 3]).collect();
        let shape = t.shape();
        ensure!(
            shape.len() == slots.len() && shape.iter().zip(&slots).all(|(&d, &s)| d == sizes[s] || d == 1),
            "FusedAttention: bias {shape:?} does not broadcast to the scores {:?}",
            slots.iter().map(|&s| sizes[s]).collect::<Vec<_>>()
        );
        let natural = Tensor::natural_strides(shape);
        let mut strides = [0; 4];
        for (axis, &slot) in slots.iter().enumerate() {
            strides[slot] = if shape[axis] == 1 { 0 } else { natural[axis] as usize };
        }
        Ok(Bias { values: plain(t)?, strides })
    }

    fn add_to(&self, scores: &mut [f32], a: usize, b: usize, i: usize) {
        let base = a * self.strides[0] + b * self.strides[1] + i * self.strides[2];
        for (j, s) in scores.iter_mut().enumerate() {
            *s += self.values[base + j * self.strides[3]];
        }
    }
}

/// Σ a·b in sixteen lanes (one AVX-512 register, four NEON ones), the lanes then added as a
/// tree: halves, quarters, then `(q0 + q2) + (q1 + q3)`. Every operation's order is written out
/// and none is fused, so each CPU gives the same bits (x86 vectorises [`portable_dot`]; aarch64
/// runs [`neon::dot`], the same operations by hand, since LLVM split this one into two-lane
/// vectors there; 32-bit ARM [`armv7::dot`], since LLVM keeps float arithmetic off armv7's NEON,
/// which flushes subnormals to zero). A sequential sum of the lanes cost as much as the products
/// on ARM (emulated counts).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "aarch64")]
    let dot = neon::dot;
    #[cfg(target_arch = "arm")]
    let dot = if crate::platform::arm_has_neon() { armv7::dot } else { portable_dot };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
    let dot = portable_dot;
    dot(a, b)
}

/// [`dot`] in plain Rust, which x86's compiler vectorises.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
#[inline(always)]
fn portable_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in ac.clone().zip(bc.clone()) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    let halves: [f32; 8] = std::array::from_fn(|l| lanes[l] + lanes[l + 8]);
    let quarters: [f32; 4] = std::array::from_fn(|l| halves[l] + halves[l + 4]);
    let tail = ac.remainder().iter().zip(bc.remainder()).fold(0f32, |s, (x, y)| s + x * y);
    (quarters[0] + quarters[2]) + (quarters[1] + quarters[3]) + tail
}

/// `y += p · x`, multiplied then added (not fused), as [`dot`].
#[inline(always)]
fn axpy(p: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "aarch64")]
    let axpy = neon::axpy;
    #[cfg(target_arch = "arm")]
    let axpy = if crate::platform::arm_has_neon() { armv7::axpy } else { portable_axpy };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
    let axpy = portable_axpy;
    axpy(p, x, y)
}

#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
#[inline(always)]
fn portable_axpy(p: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += p * x;
    }
}

#[cfg(target_arch = "arm")]
mod armv7;
#[cfg(target_arch = "aarch64")]
mod neon;

/// In place, with the maximum subtracted first.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, crate::float::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

impl TypedOp for FusedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (q, v) = (inputs[0].shape.to_tvec(), &inputs[2].shape);
        let width = v[v.len() - 1].clone();
        Ok(tvec!(f32::fact(self.out.shape(self.q.sizes(&q), width))))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_core::ops::math::add;
    use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

    use super::*;
    use crate::fuse::attention::fuse;
    use crate::int8::kernel::tests::lcg;

    fn random(seed: u64, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let values: Vec<f32> = lcg(seed, n).into_iter().map(|v| (v as f32 - 128.0) / 40.0).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    /// softmax(q·kᵀ + bias)·v written as the graph builders leave it once decluttered:
    /// `scores` and `context` are the two products' axis mappings, `bias` the bias shape if any.
    fn graph(q: &[usize], k: &[usize], v: &[usize], scores: &str, context: &str, bias: Option<&[usize]>) -> TypedModel {
        let mut m = TypedModel::default();
        let q = m.add_source("q", f32::fact(q)).unwrap();
        let k = m.add_source("k", f32::fact(k)).unwrap();
        let v = m.add_source("v", f32::fact(v)).unwrap();
        let einsum =
            |axes: &str| EinSum { axes: axes.parse().unwrap(), operating_dt: f32::datum_type(), q_params: None };
        let mut s = m.wire_node("scores", einsum(scores), &[q, k]).unwrap()[0];
        if let Some(shape) = bias {
            let b = m.add_source("bias", f32::fact(shape)).unwrap();
            s = m.wire_node("masked", add(), &[s, b]).unwrap()[0];
        }
        let softmax = Softmax { axes: tvec![3], quant_output_dt: None, kind: SoftmaxKind::Softmax };
        let p = m.wire_node("probs", softmax, &[s]).unwrap()[0];
        let out = m.wire_node("context", einsum(context), &[p, v]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        m
    }

    /// Runs `model` as tract plans it and fused; returns both outputs and the fused count.
    fn both(model: TypedModel, inputs: &[Tensor]) -> (Tensor, Tensor, usize) {
        let run = |m: TypedModel| {
            let values = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
            m.into_runnable().unwrap().run(values).unwrap().remove(0).into_tensor()
        };
        let plain = run(model.clone().into_optimized().unwrap());
        let mut fused_model = model.into_decluttered().unwrap();
        let fused = fuse(&mut fused_model).unwrap();
        fused_model.optimize().unwrap();
        (plain, run(fused_model), fused)
    }

    fn assert_close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (plain(a).unwrap(), plain(b).unwrap());
        // Sums in another order: scores of a few hundred carry ~3e-5 of rounding into exp().
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "largest difference {worst}");
    }

    #[test]
    fn decoder_attention_with_a_causal_bias_matches_tract() {
        // q [B, H, S, D] against a cache of T positions, output [B, S, H, D]; the bias is
        // [1, 1, S, T] with −inf above the diagonal, as the engine feeds it.
        let (b, h, s, t, d) = (2, 3, 4, 7, 16);
        let model = graph(
            &[b, h, s, d],
            &[b, h, t, d],
            &[b, h, t, d],
            "abcd,abed->abce",
            "abcd,abde->acbe",
            Some(&[1, 1, s, t]),
        );
        let bias: Vec<f32> = (0..s * t).map(|i| if i % t > t - s + i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let inputs = [
            random(1, &[b, h, s, d]),
            random(2, &[b, h, t, d]),
            random(3, &[b, h, t, d]),
            Tensor::from_shape(&[1, 1, s, t], &bias).unwrap(),
        ];
        let (plain, fused, count) = both(model, &inputs);
        assert_eq!(count, 1);
        assert_close(&plain, &fused);
    }

    /// The 64-channel NEON path keeps rows in registers but must give the bits of `dot` and
    /// `axpy` (which give x86's): the boards' captions are compared with x86's token for token.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn register_resident_head_gives_the_bits_of_dot_and_axpy() {
        let (keys, d) = (37, neon::HEAD);
        let stride = d + 3; // rows apart, as in a [position, head, channel] layout
        let k = random(5, &[keys * stride]);
        let v = random(6, &[keys * stride]);
        let (k, v) = (plain(&k).unwrap(), plain(&v).unwrap());
        let mut q = plain(&random(7, &[d])).unwrap().to_vec();
        q[3] = -0.0;
        let mut got = vec![0f32; keys];
        neon::scores(&q, k, |j| j * stride, &mut got);
        let want: Vec<f32> = (0..keys).map(|j| dot(&q, &k[j * stride..][..d])).collect();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        softmax(&mut got);
        let mut row = vec![f32::NAN; d];
        neon::context(&got, v, |j| j * stride, &mut row);
        let mut want = vec![0f32; d];
        for (j, &p) in got.iter().enumerate() {
            axpy(p, &v[j * stride..][..d], &mut want);
        }
        assert_eq!(
            row.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    /// armv7's NEON assembly against the portable code it replaces, bit for bit, on lengths
    /// with and without a tail (values of this size have no subnormal products, which NEON
    /// would flush to zero).
    #[cfg(target_arch = "arm")]
    #[test]
    fn armv7_neon_gives_the_bits_of_the_portable_dot_and_axpy() {
        assert!(crate::platform::arm_has_neon(), "the armv7 builds assume NEON");
        for (n, seed) in [(64, 1), (16, 2), (37, 3), (5, 4), (0, 5), (128, 6)] {
            let mut a = plain(&random(seed, &[n])).unwrap().to_vec();
            let b = plain(&random(seed + 10, &[n])).unwrap().to_vec();
            if n > 3 {
                a[3] = -0.0;
            }
            assert_eq!(armv7::dot(&a, &b).to_bits(), portable_dot(&a, &b).to_bits(), "dot of {n}");
            let (mut got, mut want) = (b.clone(), b.clone());
            armv7::axpy(0.37, &a, &mut got);
            portable_axpy(0.37, &a, &mut want);
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "axpy of {n}"
            );
        }
    }

    /// CLIP's encoder: q, k, v [B, S, H, D] straight from the projections, no bias, a batch of
    /// one (which tract drops from the scores).
    fn encoder_layout_matches_tract((b, s, h, d): (usize, usize, usize, usize), seed: u64) {
        let shape = [b, s, h, d];
        let model = graph(&shape, &shape, &shape, "acbd,aebd->abce", "abcd,adbe->acbe", None);
        let inputs = [random(seed, &shape), random(seed + 1, &shape), random(seed + 2, &shape)];
        let (plain, fused, count) = both(model, &inputs);
        assert_eq!(count, 1);
        assert_close(&plain, &fused);
    }

    #[test]
    fn encoder_attention_in_the_projections_layout_matches_tract() {
        encoder_layout_matches_tract((1, 5, 2, 8), 4);
    }

    #[test]
    fn heads_shared_between_threads_match_tract() {
        // Enough work to go to the pool: CLIP ViT-B/32's 12 heads over 50 tokens.
        crate::int8::pool::set_threads(2);
        encoder_layout_matches_tract((1, 50, 12, 64), 7);
    }

    #[test]
    fn a_bias_of_another_shape_is_an_error_not_a_panic() {
        let scores = [1, 2, 3, 5];
        assert!(Bias::new(&random(1, &[1, 1, 3, 5]), 2, scores).is_ok());
        assert!(Bias::new(&random(1, &[1, 2, 1, 5]), 2, scores).is_ok());
        assert!(Bias::new(&random(1, &[2, 3, 5]), 1, [2, 1, 3, 5]).is_ok());
        for shape in [&[1, 1, 3, 6][..], &[3, 5], &[2, 2, 3, 5]] {
            let err = Bias::new(&random(1, shape), 2, scores).err().unwrap();
            assert!(format!("{err:#}").contains("does not broadcast"), "{shape:?}: {err:#}");
        }
    }

    #[test]
    fn other_patterns_are_left_to_tract() {
        let (b, h, s, t, d) = (1, 2, 3, 5, 4);
        // Softmax over the query axis instead of the keys.
        let mut m = graph(&[b, h, s, d], &[b, h, t, d], &[b, h, t, d], "abcd,abed->abce", "abcd,abde->acbe", None);
        let probs = m.node_by_name("probs").unwrap().id;
        m.node_mut(probs).op = Box::new(Softmax { axes: tvec![2], quant_output_dt: None, kind: SoftmaxKind::Softmax });
        let mut m = m.into_decluttered().unwrap();
        assert_eq!(fuse(&mut m).unwrap(), 0);
        // The scores also read elsewhere (a second output).
        let mut m = graph(&[b, h, s, d], &[b, h, t, d], &[b, h, t, d], "abcd,abed->abce", "abcd,abde->acbe", None);
        let scores = m.node_by_name("scores").unwrap().id;
        let outputs = [m.output_outlets().unwrap()[0], OutletId::new(scores, 0)];
        m.select_output_outlets(&outputs).unwrap();
        let mut m = m.into_decluttered().unwrap();
        assert_eq!(fuse(&mut m).unwrap(), 0);
    }
}
