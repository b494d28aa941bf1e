//! The tract operator that runs an ONNX `QLinearMatMul` or `MatMulInteger` by a constant int8
//! weight on [`Kernel`]. The ONNX parsers that put it in place of tract's own are in
//! the `parse` module; the graph passes that merge and pack it in `passes`.
//!
//! Semantics are ONNX's: `MatMulInteger` gives the i32 sums Σ_k (a − a_zero)·w;
//! `QLinearMatMul` requantizes them, `saturate(round_half_even(sum · m) + y_zero)` with
//! `m = a_scale · w_scale / y_scale`. The fast path takes the weight, its scale and every zero
//! point from initializers (as `host-tools quantize` writes them) with the weight's zero point 0;
//! any other form is left to tract.

use std::borrow::Cow;
use std::sync::Arc;

use tract_onnx::tract_hir::internal::*;

use super::kernel::{Activations, Kernel, Layout, PackedWeights, PANEL};
use super::pool::Pool;
use super::quantize::round_half_even;

/// Products of at least this many multiply-adds are shared between the pool's threads: about
/// 5 µs of work on one thread, several times what handing out a job costs.
const THREADED_MACS: usize = 1 << 18;

/// What the product hands on.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Output {
    /// `MatMulInteger`: the i32 sums.
    Sums,
    /// `QLinearMatMul`: the sums requantized with one multiplier per column.
    Requantized { multipliers: Arc<[f32]>, zero: i32, datum: DatumType },
    /// `MatMulInteger` then `Cast` to f32 and `Mul` by a constant per column (the quantizer's
    /// LM head), fused by `passes::fuse_scales`: f32 `sum · scale_j`.
    Scaled { scales: Arc<[f32]> },
}

/// A constant int8 weight `[k, n]`.
#[derive(Debug)]
pub(super) enum Weights {
    /// Parsed, not yet wired: the initializer feeding the node's input `input`. The tensor is
    /// taken from tract's own constant when the node is wired, rather than decoded a second time.
    Input {
        input: usize,
        k: usize,
        n: usize,
    },
    /// Wired: `[k, n_i]` column blocks side by side (one, unless the quantizer cut it).
    /// Packing waits for `passes::prepare`, after the blocks are merged: each weight packed once.
    Blocks(Vec<Arc<Block>>),
    Packed(PackedWeights),
}

/// One column block of a weight, `[k, n]` row-major.
#[derive(Debug)]
pub(super) enum Block {
    /// tract's constant for the initializer, shared with the graph.
    Constant(Arc<Tensor>),
    /// The initializer's bytes, moved out of the ONNX proto before tract parsed it
    /// (the `parse` module): tract made no tensor of them.
    Taken { k: usize, n: usize, bytes: Vec<u8> },
}

impl Block {
    pub(super) fn k(&self) -> usize {
        match self {
            Block::Constant(t) => t.shape()[0],
            Block::Taken { k, .. } => *k,
        }
    }

    pub(super) fn n(&self) -> usize {
        match self {
            Block::Constant(t) => t.shape()[1],
            Block::Taken { n, .. } => *n,
        }
    }

    pub(super) fn values(&self) -> TractResult<&[i8]> {
        match self {
            Block::Constant(t) => t.try_as_plain_ram()?.as_slice::<i8>(),
            // SAFETY: i8 and u8 have the same size and alignment, and every byte is a valid i8.
            Block::Taken { bytes, .. } => Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len()) }),
        }
    }
}

impl Weights {
    pub(super) fn k(&self) -> usize {
        match self {
            Weights::Input { k, .. } => *k,
            Weights::Blocks(blocks) => blocks[0].k(),
            Weights::Packed(p) => p.k(),
        }
    }

    pub(super) fn n(&self) -> usize {
        match self {
            Weights::Input { n, .. } => *n,
            Weights::Blocks(blocks) => blocks.iter().map(|b| b.n()).sum(),
            Weights::Packed(p) => p.n(),
        }
    }

    /// In `layout`: packed by `passes::prepare` or, in a graph that skipped it, now.
    pub(super) fn packed(&self, layout: Layout) -> TractResult<Cow<'_, PackedWeights>> {
        match self {
            Weights::Packed(p) => Ok(Cow::Borrowed(p)),
            Weights::Input { .. } => bail!("Int8MatMul: weight not wired"),
            Weights::Blocks(blocks) => {
                let k = self.k();
                let slices = blocks.iter().map(|b| Ok((b.values()?, b.n()))).collect::<TractResult<Vec<_>>>()?;
                Ok(Cow::Owned(PackedWeights::pack_blocks(layout, k, &slices, super::pool::current().as_deref())))
            }
        }
    }
}

/// `a · w` for activations `a` of shape `[..., k]` (i8 or u8) and a constant `[k, n]` int8 weight.
#[derive(Debug, Clone)]
pub struct Int8MatMul {
    pub(super) kernel: Kernel,
    pub(super) weights: Arc<Weights>,
    /// The activations' zero point, in their own type (i8 or u8).
    pub(super) a_zero: i32,
    pub(super) output: Output,
}

impl PartialEq for Int8MatMul {
    // Weights compare by identity: comparing megabytes whenever tract looks for duplicate nodes
    // would cost more than the duplicates it could find.
    fn eq(&self, other: &Self) -> bool {
        self.kernel == other.kernel
            && Arc::ptr_eq(&self.weights, &other.weights)
            && self.a_zero == other.a_zero
            && self.output == other.output
    }
}

// tract's Op needs Eq; the multipliers are finite scales, never NaN.
impl Eq for Int8MatMul {}

impl Int8MatMul {
    fn output_datum(&self) -> DatumType {
        match &self.output {
            Output::Sums => i32::datum_type(),
            Output::Requantized { datum, .. } => *datum,
            Output::Scaled { .. } => f32::datum_type(),
        }
    }

    /// The activations in the kernel's layout and type, and their zero point in that type.
    fn widen(&self, a: &Tensor, k: usize) -> TractResult<(Activations, i32)> {
        let unsigned = match a.datum_type().unquantized() {
            DatumType::U8 => true,
            DatumType::I8 => false,
            other => bail!("Int8MatMul: activations of type {other:?}, expected i8 or u8"),
        };
        ensure!(a.shape().last() == Some(&k), "Int8MatMul: activations {:?}, weight has {k} rows", a.shape());
        // i8 ↔ u8 by adding or taking 128, which flips the top bit; the zero point moves with it.
        let (flip, shift) = match (unsigned, self.kernel.signed_activations()) {
            (false, false) => (0x80, 128),
            (true, true) => (0x80, -128),
            _ => (0, 0),
        };
        let rows = Activations::new(self.kernel.layout(), a.try_as_plain_ram()?.as_bytes(), k, flip);
        Ok((rows, self.a_zero + shift))
    }

    /// Raw sums, panel by panel, split between the threads of `pool` if the product is large.
    fn products(&self, a: &Activations, w: &PackedWeights, pool: Option<&Pool>) -> TractResult<Vec<i32>> {
        let rows = a.rows();
        // Room for an even number of panels: threads take whole pairs, as one thread does.
        let per_pair = 2 * rows * PANEL;
        let pairs = w.panels().div_ceil(2);
        let mut out = vec![0i32; pairs * per_pair];
        let run = |pair: usize, chunk: &mut [i32]| {
            let panels = 2 * pair..(2 * pair + 2 * chunk.len() / per_pair).min(w.panels());
            self.kernel.run(a, w, panels.clone(), &mut chunk[..panels.len() * rows * PANEL]);
        };
        match pool.filter(|_| rows * w.k() * w.n() >= THREADED_MACS) {
            Some(pool) => {
                // A few contiguous runs of pairs per thread: each streams its part of the weight
                // in order, and a thread held up by the OS leaves its share to the others.
                let per_task = pairs.div_ceil(4 * pool.threads()).max(1);
                pool.for_each_chunk_mut(&mut out, per_task * per_pair, |task, chunk| run(task * per_task, chunk));
            }
            None if rows > 0 => run(0, &mut out),
            None => {}
        }
        Ok(out)
    }

    /// Subtracts the zero point's share and writes `[rows, n]` in the output type, in one pass
    /// over the kernel's panel-ordered sums.
    fn finish(
        &self,
        w: &PackedWeights,
        sums: &[i32],
        rows: usize,
        a_zero: i32,
        shape: &[usize],
    ) -> TractResult<Tensor> {
        let mut out = Tensor::zero_dt(self.output_datum(), shape)?;
        let mut view = out.try_as_plain_ram_mut()?;
        let blocks = Blocks { w, sums, rows, a_zero };
        match &self.output {
            Output::Sums => blocks.write(view.as_slice_mut::<i32>()?, &[], |v, _| v),
            Output::Scaled { scales } => blocks.write(view.as_slice_mut::<f32>()?, scales, |v, m| v as f32 * m),
            Output::Requantized { multipliers, zero, datum } => {
                if *datum == DatumType::U8 {
                    let out = view.as_slice_mut::<u8>()?;
                    blocks.write(out, multipliers, |v, m| requantize(v, m, *zero, (0, 255)) as u8)
                } else {
                    let out = view.as_slice_mut::<i8>()?;
                    blocks.write(out, multipliers, |v, m| requantize(v, m, *zero, (-128, 127)) as i8)
                }
            }
        }
        Ok(out)
    }
}

/// The kernel's raw sums, panel by panel (`[panel][row][PANEL]`), of activations whose zero
/// point is `a_zero`.
struct Blocks<'a> {
    w: &'a PackedWeights,
    sums: &'a [i32],
    rows: usize,
    a_zero: i32,
}

impl Blocks<'_> {
    /// `out[r][j] = f(sum[r][j] − a_zero · Σ_k w[k][j], per_column[j])`, row-major; `per_column`
    /// may be empty (then `f` gets 0). Zipped slices of one panel row at a time: the loop
    /// vectorises.
    fn write<T: Copy>(&self, out: &mut [T], per_column: &[f32], f: impl Fn(i32, f32) -> T) {
        let (n, col_sums) = (self.w.n(), self.w.col_sums());
        let none = [0f32; PANEL];
        for (p, panel) in self.sums.chunks_exact(self.rows * PANEL).take(self.w.panels()).enumerate() {
            let cols = p * PANEL..((p + 1) * PANEL).min(n);
            let params = if per_column.is_empty() { &none[..cols.len()] } else { &per_column[cols.clone()] };
            let col_sums = &col_sums[cols.clone()];
            for (r, s) in panel.chunks_exact(PANEL).enumerate() {
                let row = &mut out[r * n + cols.start..r * n + cols.end];
                // A whole panel as arrays: a loop of constant length, unrolled into vector
                // instructions (the slices' loop stayed scalar on aarch64).
                if let (Ok(row), Ok(s), Ok(col_sums), Ok(params)) = (
                    <&mut [T; PANEL]>::try_from(&mut *row),
                    <&[i32; PANEL]>::try_from(s),
                    <&[i32; PANEL]>::try_from(col_sums),
                    <&[f32; PANEL]>::try_from(params),
                ) {
                    // Read into locals, computed into a local, then stored: with the loads and
                    // stores interleaved through references LLVM left it scalar (~6 instructions
                    // an output on aarch64).
                    let (s, col_sums, params) = (*s, *col_sums, *params);
                    *row = std::array::from_fn(|i| f(s[i] - self.a_zero * col_sums[i], params[i]));
                    continue;
                }
                for (((o, &s), &c), &m) in row.iter_mut().zip(s).zip(col_sums).zip(params) {
                    *o = f(s - self.a_zero * c, m);
                }
            }
        }
    }
}

/// `saturate(round_half_even(sum · m) + zero)` into `lo..=hi`.
#[inline(always)]
fn requantize(sum: i32, m: f32, zero: i32, (lo, hi): (i32, i32)) -> i32 {
    // Clamped first: the rounding is exact well beyond any int8 result.
    (round_half_even((sum as f32 * m).clamp(-1024.0, 1024.0)) + zero).clamp(lo, hi)
}

impl Op for Int8MatMul {
    fn name(&self) -> StaticName {
        "Int8MatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?}, weight {}×{}, output {:?}",
            self.kernel,
            self.weights.k(),
            self.weights.n(),
            self.output_datum()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Int8MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, w) = (&inputs[0], self.weights.packed(self.kernel.layout())?);
        let (rows, a_zero) = self.widen(a, w.k())?;
        let sums = self.products(&rows, &w, super::pool::current().as_deref())?;
        let mut shape = a.shape().to_vec();
        *shape.last_mut().context("Int8MatMul: scalar activations")? = w.n();
        Ok(tvec!(self.finish(&w, &sums, rows.rows(), a_zero, &shape)?.into_tvalue()))
    }
}

impl TypedOp for Int8MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(
            shape.last() == Some(&self.weights.k().to_dim()),
            "Int8MatMul: activations {:?}, weight has {} rows",
            shape,
            self.weights.k()
        );
        *shape.last_mut().unwrap() = self.weights.n().to_dim();
        Ok(tvec!(self.output_datum().fact(shape)))
    }

    as_op!();
}

impl Output {
    /// Whether products with these outputs can be computed as one.
    pub(super) fn joins(&self, other: &Output) -> bool {
        match (self, other) {
            (Output::Sums, Output::Sums) => true,
            (Output::Scaled { .. }, _) | (_, Output::Scaled { .. }) => false,
            (Output::Requantized { zero: z1, datum: d1, .. }, Output::Requantized { zero: z2, datum: d2, .. }) => {
                z1 == z2 && d1 == d2
            }
            _ => false,
        }
    }

    /// The output of blocks side by side: their multipliers one after the other.
    pub(super) fn join<'a>(first: &Output, blocks: impl Iterator<Item = &'a Output>) -> Output {
        match first {
            Output::Sums => Output::Sums,
            Output::Scaled { scales } => Output::Scaled { scales: scales.clone() },
            Output::Requantized { zero, datum, .. } => {
                let multipliers = blocks
                    .flat_map(|b| match b {
                        Output::Requantized { multipliers, .. } => multipliers.to_vec(),
                        Output::Sums | Output::Scaled { .. } => Vec::new(),
                    })
                    .collect();
                Output::Requantized { multipliers, zero: *zero, datum: *datum }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tract_onnx::pb;
    use tract_onnx::pb::tensor_proto::DataType;
    use tract_onnx::prelude::Framework;

    use super::super::kernel::tests::for_each_kernel;
    use super::super::passes::{fuse_scales, prepare};
    use super::*;

    fn values(seed: u64, len: usize) -> Vec<i8> {
        super::super::kernel::tests::lcg(seed, len).into_iter().map(|v| v as i8).collect()
    }

    fn initializer(name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn value_info(name: &str, elem_type: DataType) -> pb::ValueInfoProto {
        let tensor = pb::type_proto::Tensor { elem_type: elem_type as i32, shape: None };
        let r#type = pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(tensor)), ..Default::default() };
        pb::ValueInfoProto { name: name.into(), r#type: Some(r#type), ..Default::default() }
    }

    /// `a` (int8 `[rows, k]`) → `QLinearMatMul` by a `[k, n]` weight (per-tensor scale) → `y`, and
    /// `MatMulInteger` by the same weight with a's zero point → `sums`: the two forms
    /// `host-tools quantize` writes.
    fn graph(k: usize, n: usize, a_zero: i8) -> pb::ModelProto {
        let f = |v: f32| v.to_le_bytes().to_vec();
        let w: Vec<u8> = values(k as u64 * 7 + n as u64, k * n).into_iter().map(|v| v as u8).collect();
        let graph = pb::GraphProto {
            node: vec![
                node("QLinearMatMul", &["a", "a_scale", "a_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero"], "y"),
                node("MatMulInteger", &["a", "w2", "a_zero", "w_zero"], "sums"),
            ],
            initializer: vec![
                initializer("a_scale", &[], DataType::Float, f(0.02)),
                initializer("a_zero", &[], DataType::Int8, vec![a_zero as u8]),
                initializer("w", &[k, n], DataType::Int8, w.clone()),
                initializer("w2", &[k, n], DataType::Int8, w),
                initializer("w_scale", &[], DataType::Float, f(0.01)),
                initializer("w_zero", &[], DataType::Int8, vec![0]),
                initializer("y_scale", &[], DataType::Float, f(0.05)),
                initializer("y_zero", &[], DataType::Int8, vec![3]),
            ],
            input: vec![value_info("a", DataType::Int8)],
            output: vec![value_info("y", DataType::Int8), value_info("sums", DataType::Int32)],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn run(onnx: &tract_onnx::Onnx, proto: &pb::ModelProto, a: &Tensor) -> (Vec<i8>, Vec<i32>, usize) {
        let model = onnx
            .model_for_proto_model(proto)
            .unwrap()
            .with_input_fact(0, InferenceFact::dt_shape(i8::datum_type(), a.shape()))
            .unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let fast = plan.model().nodes().iter().filter(|n| n.op_is::<Int8MatMul>()).count();
        let out = plan.run(tvec!(a.clone().into_tvalue())).unwrap();
        let y = out[0].try_as_plain_ram().unwrap().as_slice::<i8>().unwrap().to_vec();
        let sums = out[1].try_as_plain_ram().unwrap().as_slice::<i32>().unwrap().to_vec();
        (y, sums, fast)
    }

    #[test]
    fn products_match_tract_and_onnx_semantics() {
        for_each_kernel(|_| {
            for (rows, k, n, a_zero) in [(1, 768, 300, -5i8), (3, 64, 17, 0), (10, 130, 40, 7), (50, 96, 33, -128)] {
                let proto = graph(k, n, a_zero);
                let a = Tensor::from_shape(&[rows, k], &values(rows as u64 + 99, rows * k)).unwrap();
                let (y, sums, fast) = run(&super::super::onnx(), &proto, &a);
                let (y_ref, sums_ref, fast_ref) = run(&tract_onnx::onnx(), &proto, &a);
                assert_eq!((fast, fast_ref), (2, 0), "both products run by Int8MatMul, none in tract's plan");
                assert_eq!(sums, sums_ref, "MatMulInteger rows {rows} k {k} n {n}");
                // Requantization: the ONNX formula computed here in f64, and tract's result, within
                // one step (rounding of exact halves may differ).
                let w = values(k as u64 * 7 + n as u64, k * n);
                let av = values(rows as u64 + 99, rows * k);
                for r in 0..rows {
                    for j in 0..n {
                        let s: i64 =
                            (0..k).map(|kk| (av[r * k + kk] as i64 - a_zero as i64) * w[kk * n + j] as i64).sum();
                        assert_eq!(sums[r * n + j] as i64, s);
                        let want = ((s as f64 * 0.02 * 0.01 / 0.05).round() + 3.0).clamp(-128.0, 127.0);
                        let got = y[r * n + j] as f64;
                        assert!((got - want).abs() <= 1.0, "y[{r}][{j}] = {got}, ONNX formula {want}");
                        assert!(
                            (got - y_ref[r * n + j] as f64).abs() <= 1.0,
                            "y[{r}][{j}] = {got}, tract {}",
                            y_ref[r * n + j]
                        );
                    }
                }
                let exact = y.iter().zip(&y_ref).filter(|(a, b)| a == b).count();
                assert!(exact * 100 >= y.len() * 99, "only {exact} of {} requantized values equal tract's", y.len());
            }
        })
    }

    /// `MatMulInteger` → `Cast` to f32 → `Mul` by `scales` (`[n]`, or `[1]`): the quantizer's LM head.
    fn rescaled_graph(k: usize, n: usize, scales: &[f32]) -> pb::ModelProto {
        let w: Vec<u8> = values(k as u64 + 5, k * n).into_iter().map(|v| v as u8).collect();
        let mut cast = node("Cast", &["sums"], "sums_f32");
        cast.attribute.push(pb::AttributeProto {
            name: "to".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: DataType::Float as i64,
            ..Default::default()
        });
        let raw = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
        let graph = pb::GraphProto {
            node: vec![
                node("MatMulInteger", &["a", "w", "a_zero", "w_zero"], "sums"),
                cast,
                node("Mul", &["sums_f32", "scales"], "y"),
            ],
            initializer: vec![
                initializer("a_zero", &[], DataType::Int8, vec![3]),
                initializer("w", &[k, n], DataType::Int8, w),
                initializer("w_zero", &[], DataType::Int8, vec![0]),
                initializer("scales", &[scales.len()], DataType::Float, raw),
            ],
            input: vec![value_info("a", DataType::Int8)],
            output: vec![value_info("y", DataType::Float)],
            ..Default::default()
        };
        let opset = vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }];
        pb::ModelProto { ir_version: 7, opset_import: opset, graph: Some(graph), ..Default::default() }
    }

    #[test]
    fn a_rescale_after_the_sums_runs_inside_the_product() {
        for_each_kernel(|_| {
            let (rows, k, n) = (2, 96, 40);
            let a = Tensor::from_shape(&[rows, k], &values(17, rows * k)).unwrap();
            let per_column: Vec<f32> = (0..n).map(|j| 1e-3 * (j as f32 + 1.0)).collect();
            for scales in [&per_column[..], &[0.0125]] {
                let proto = rescaled_graph(k, n, scales);
                let load = |onnx: &tract_onnx::Onnx| {
                    let model = onnx.model_for_proto_model(&proto).unwrap();
                    let model = model.with_input_fact(0, InferenceFact::dt_shape(i8::datum_type(), a.shape())).unwrap();
                    model.into_typed().unwrap()
                };
                let mut fused = load(&super::super::onnx());
                prepare(&mut fused).unwrap();
                fused.declutter().unwrap();
                assert_eq!(fuse_scales(&mut fused).unwrap(), 1, "{} scales", scales.len());
                let run = |m: TypedModel| {
                    let plan = m.into_optimized().unwrap().into_runnable().unwrap();
                    let out = plan.run(tvec!(a.clone().into_tvalue())).unwrap();
                    out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
                };
                assert!(fused.nodes().iter().all(|n| n.op.name() != "Mul" && n.op.name() != "Cast"));
                // The same i32 → f32 → product as tract's three operators: equal, not close.
                assert_eq!(run(fused), run(load(&tract_onnx::onnx())), "{} scales", scales.len());
            }
        })
    }

    #[test]
    fn threads_share_a_product_without_changing_it() {
        for_each_kernel(|kernel| {
            // One row by GPT-2's MLP weight and 50 rows by a small one: above THREADED_MACS, with a
            // last task shorter than the others and a lone last panel.
            for (rows, k, n) in [(1, 768, 3072 + 16), (50, 96, 1000)] {
                let w = values(k as u64 + n as u64, k * n);
                let packed = PackedWeights::pack(kernel.layout(), &w, k, n);
                let op = Int8MatMul {
                    kernel,
                    weights: Arc::new(Weights::Packed(packed.clone())),
                    a_zero: 0,
                    output: Output::Sums,
                };
                let a_bytes: Vec<u8> = values(rows as u64, rows * k).into_iter().map(|v| v as u8).collect();
                let a = Activations::new(kernel.layout(), &a_bytes, k, 0);
                assert!(rows * k * n >= THREADED_MACS);
                let alone = op.products(&a, &packed, None).unwrap();
                for threads in [2, 3] {
                    let shared = op.products(&a, &packed, Some(&Pool::new(threads))).unwrap();
                    assert_eq!(shared, alone, "rows {rows} k {k} n {n}, {threads} threads");
                }
            }
        })
    }

    /// The QLinearMatMul of [`graph`] cut into column blocks with a scale each, concatenated
    /// again, as `host-tools quantize` writes a large weight.
    fn blocked_graph(k: usize, n: usize, cuts: &[usize]) -> pb::ModelProto {
        let mut proto = graph(k, n, 2);
        let g = proto.graph.as_mut().unwrap();
        let w = g.initializer.iter().find(|t| t.name == "w").unwrap().raw_data.clone();
        g.node.clear();
        g.output.truncate(1);
        let mut parts = Vec::new();
        for (b, c) in cuts.windows(2).enumerate() {
            let cols: Vec<u8> = (0..k).flat_map(|kk| w[kk * n + c[0]..kk * n + c[1]].to_vec()).collect();
            let (wb, sb, yb) = (format!("block{b}"), format!("block{b}_scale"), format!("y{b}"));
            g.initializer.push(initializer(&wb, &[k, c[1] - c[0]], DataType::Int8, cols));
            g.initializer.push(initializer(
                &sb,
                &[],
                DataType::Float,
                (0.01 + 0.002 * b as f32).to_le_bytes().to_vec(),
            ));
            g.node.push(node(
                "QLinearMatMul",
                &["a", "a_scale", "a_zero", &wb, &sb, "w_zero", "y_scale", "y_zero"],
                &yb,
            ));
            parts.push(yb);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let mut concat = node("Concat", &refs, "y");
        concat.attribute.push(pb::AttributeProto {
            name: "axis".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: -1,
            ..Default::default()
        });
        g.node.push(concat);
        proto
    }

    #[test]
    fn column_blocks_merge_into_one_product() {
        for_each_kernel(|_| {
            let (k, n) = (40, 100);
            let proto = blocked_graph(k, n, &[0, 30, 33, 70, 100]);
            let a = Tensor::from_shape(&[3, k], &values(8, 3 * k)).unwrap();
            let load = |onnx: tract_onnx::Onnx, merge: bool| {
                let model = onnx
                    .model_for_proto_model(&proto)
                    .unwrap()
                    .with_input_fact(0, InferenceFact::dt_shape(i8::datum_type(), a.shape()))
                    .unwrap();
                let mut typed = model.into_typed().unwrap();
                let merged = if merge { prepare(&mut typed).unwrap() } else { 0 };
                let plan = typed.into_optimized().unwrap().into_runnable().unwrap();
                let ops: Vec<&Int8MatMul> =
                    plan.model().nodes().iter().filter_map(|n| n.op_as::<Int8MatMul>()).collect();
                // Prepared: packed once at load; otherwise the parsed blocks, packed by each run.
                let packed = ops.iter().filter(|op| matches!(*op.weights, Weights::Packed(_))).count();
                assert_eq!(packed, if merge { ops.len() } else { 0 });
                let ops = ops.len();
                let out = plan.run(tvec!(a.clone().into_tvalue())).unwrap();
                (merged, ops, out[0].try_as_plain_ram().unwrap().as_slice::<i8>().unwrap().to_vec())
            };
            let (merged, ops, y) = load(super::super::onnx(), true);
            let (_, blocks, y_blocks) = load(super::super::onnx(), false);
            let (_, _, y_tract) = load(tract_onnx::onnx(), false);
            assert_eq!((merged, ops, blocks), (1, 1, 4), "4 blocks, merged into one product");
            // Same arithmetic, per-block scales carried per column: identical to the blocks.
            assert_eq!(y, y_blocks);
            // And the ONNX formula, block by block.
            let (w, av, cuts) = (values(k as u64 * 7 + n as u64, k * n), values(8, 3 * k), [0, 30, 33, 70, 100]);
            for r in 0..3 {
                for j in 0..n {
                    let b = cuts.windows(2).position(|c| j < c[1]).unwrap();
                    let s: i64 = (0..k).map(|kk| (av[r * k + kk] as i64 - 2) * w[kk * n + j] as i64).sum();
                    let want =
                        ((s as f64 * 0.02 * (0.01 + 0.002 * b as f64) / 0.05).round() + 3.0).clamp(-128.0, 127.0);
                    assert!(
                        (y[r * n + j] as f64 - want).abs() <= 1.0,
                        "y[{r}][{j}] = {}, ONNX formula {want}",
                        y[r * n + j]
                    );
                }
            }
            let far: Vec<_> =
                y.iter().zip(&y_tract).enumerate().filter(|(_, (a, b))| (**a as i32 - **b as i32).abs() > 1).collect();
            assert!(far.is_empty(), "{far:?}");
        })
    }

    /// The graph parsed with its weights taken ([`super::super::parse`]): the blocks taken, and
    /// the outputs.
    fn run_taken(proto: &pb::ModelProto, a: &Tensor) -> TractResult<(usize, TVec<TValue>)> {
        let model = super::super::parse::model_for_proto(&super::super::onnx(), proto.clone(), None)?
            .with_input_fact(0, InferenceFact::dt_shape(i8::datum_type(), a.shape()))?;
        let typed = model.into_typed()?;
        let taken = typed
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<Int8MatMul>())
            .filter(|op| matches!(&*op.weights, Weights::Blocks(b) if matches!(*b[0], Block::Taken { .. })))
            .count();
        let out = typed.into_optimized()?.into_runnable()?.run(tvec!(a.clone().into_tvalue()))?;
        Ok((taken, out))
    }

    #[test]
    fn weights_taken_from_the_proto_give_the_same_products() {
        for_each_kernel(|_| {
            let (k, n) = (64, 40);
            let a = Tensor::from_shape(&[2, k], &values(11, 2 * k)).unwrap();
            let proto = graph(k, n, 3);
            let (taken, out) = run_taken(&proto, &a).unwrap();
            let (y, sums, fast) = run(&super::super::onnx(), &proto, &a);
            assert_eq!((taken, fast), (2, 2), "both weights taken, both products fast");
            assert_eq!(out[0].try_as_plain_ram().unwrap().as_slice::<i8>().unwrap(), &y[..]);
            assert_eq!(out[1].try_as_plain_ram().unwrap().as_slice::<i32>().unwrap(), &sums[..]);

            // `w` also read by another node: it stays a tensor (the product wired to tract's
            // constant), `w2` is still taken, and the products are unchanged.
            let mut shared = proto.clone();
            let g = shared.graph.as_mut().unwrap();
            g.node.push(node("Identity", &["w"], "w_copy"));
            g.output.push(value_info("w_copy", DataType::Int8));
            let (taken, out) = run_taken(&shared, &a).unwrap();
            assert_eq!(taken, 1);
            assert_eq!(out[0].try_as_plain_ram().unwrap().as_slice::<i8>().unwrap(), &y[..]);
            assert_eq!(out[1].try_as_plain_ram().unwrap().as_slice::<i32>().unwrap(), &sums[..]);
            assert_eq!(out[2].shape(), &[k, n]);
        })
    }

    #[test]
    fn a_weight_of_the_wrong_length_is_an_error_not_a_panic() {
        for_each_kernel(|_| {
            let mut proto = graph(16, 8, 0);
            let g = proto.graph.as_mut().unwrap();
            g.initializer.iter_mut().find(|t| t.name == "w").unwrap().raw_data.truncate(100);
            let a = Tensor::from_shape(&[2, 16], &values(5, 32)).unwrap();
            let e = run_taken(&proto, &a).unwrap_err();
            assert!(format!("{e:#}").contains("w"), "{e:#}");
        })
    }

    #[test]
    fn other_forms_are_left_to_tract() {
        for_each_kernel(|_| {
            // A weight with a non-zero zero point is not what the kernel handles: tract parses it.
            let mut proto = graph(16, 8, 0);
            let graph = proto.graph.as_mut().unwrap();
            graph.initializer.iter_mut().find(|t| t.name == "w_zero").unwrap().raw_data = vec![1];
            let a = Tensor::from_shape(&[2, 16], &values(5, 32)).unwrap();
            let (y, sums, fast) = run(&super::super::onnx(), &proto, &a);
            let (y_ref, sums_ref, _) = run(&tract_onnx::onnx(), &proto, &a);
            assert_eq!(fast, 0);
            assert_eq!((y, sums), (y_ref, sums_ref));
        })
    }
}
