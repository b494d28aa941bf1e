//! GPT-2's tanh GELU as one operator.
//!
//! Why: the exporters write `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` as nine element-wise
//! ONNX nodes (ONNX before opset 20 has no GELU). tract 0.23.9 only recognises the formula when
//! the cube is a `Pow`, and its declutter turns `Pow` into `PowConst` before looking, so the
//! chain stays nine operators: ~0.17 ms of each int8 decoding step on the benchmark machine,
//! almost all of it per-operator overhead on 3072 values. [`fuse`] finds the chain as tract
//! leaves it decluttered and puts tract's own `GeluApproximate` (one vectorised pass) in its
//! place.

use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Mul, Square, Tanh};
use tract_onnx::tract_core::ops::nn::gelu_approximate::gelu_approximate;
use tract_onnx::tract_hir::internal::*;

/// Replaces every tanh GELU chain of the decluttered `model`; returns how many.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for node in model.eval_order()? {
        let Some((x, last)) = chain_at(model, node)? else { continue };
        let name = format!("{}.fused", model.node(last).name);
        crate::fuse::splice(model, name, gelu_approximate(false), &[x], OutletId::new(last, 0))?;
        fused += 1;
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// If `square` is the `x²` of a GELU chain: the chain's input `x` and its last node.
///
/// Decluttered, the chain reads `Square(x)·x → ·0.044715 → x + · → ·√(2/π) → Tanh → · + 1`,
/// then `(x·0.5)·(that)`. Every intermediate must feed only the next step, so that the whole
/// chain goes; `x` itself feeds several of them.
fn chain_at(model: &TypedModel, square: usize) -> TractResult<Option<(OutletId, usize)>> {
    let node = model.node(square);
    if !is_element_wise::<Square>(node) || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let x = node.inputs[0];
    let outputs = model.output_outlets()?;
    let ends_chain = |n: &TypedNode| outputs.contains(&OutletId::new(n.id, 0));
    let Some(cube) = model.find_succ_bin_with_outlet::<Mul>(node, &x) else { return Ok(None) };
    let Some(scaled_cube) = model.find_succ_bin_with_const::<Mul>(cube, 0.044715) else { return Ok(None) };
    let Some(inner) = model.find_succ_bin_with_outlet::<Add>(scaled_cube, &x) else { return Ok(None) };
    let Some(scaled) = model.find_succ_bin_with_const::<Mul>(inner, std::f32::consts::FRAC_2_SQRT_PI / 2f32.sqrt())
    else {
        return Ok(None);
    };
    let Some(tanh) = model.single_succ(scaled.id)?.filter(|n| is_element_wise::<Tanh>(n)) else { return Ok(None) };
    let Some(plus_one) = model.find_succ_bin_with_const::<Add>(tanh, 1.0) else { return Ok(None) };
    let Some(last) = model.single_succ(plus_one.id)?.filter(|n| is_bin::<Mul>(n)) else { return Ok(None) };
    let half_x = last.inputs.iter().map(|i| model.node(i.node)).find(|n| n.id != plus_one.id);
    let Some(half_x) = half_x.filter(|n| is_bin::<Mul>(n) && n.inputs.contains(&x)) else { return Ok(None) };
    let half_x_feeds_last = model.single_succ(half_x.id)?.is_some_and(|n| n.id == last.id);
    let intermediates = [node, cube, scaled_cube, inner, scaled, tanh, plus_one, half_x];
    if !half_x_feeds_last
        || !model.matches_single_input_const(half_x, 0.5)
        || intermediates.iter().any(|n| ends_chain(n))
    {
        return Ok(None);
    }
    Ok(Some((x, last.id)))
}

fn is_element_wise<E: ElementWiseMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>().is_some_and(|op| op.0.is::<E>())
}

fn is_bin<B: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<B>())
}

#[cfg(test)]
mod tests {
    use tract_onnx::tract_core::ops::math::{add, mul, square, tanh};

    use super::*;

    /// The chain as the graph builders write it, with the cube's coefficient `k`, and the tanh
    /// also a graph output if `tanh_is_output`.
    fn graph(k: f32, tanh_is_output: bool) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 5, 3072])).unwrap();
        let konst = |m: &mut TypedModel, name: &str, v: f32| m.add_const(name, tensor3(&[[[v]]])).unwrap();
        let (ck, cs, one, half) = (
            konst(&mut m, "k", k),
            konst(&mut m, "c", 0.7978846),
            konst(&mut m, "one", 1.0),
            konst(&mut m, "half", 0.5),
        );
        let wire =
            |m: &mut TypedModel, name: &str, op: Box<dyn TypedOp>, i: &[OutletId]| m.wire_node(name, op, i).unwrap()[0];
        let hx = wire(&mut m, "half_x", Box::new(mul()), &[x, half]);
        let x2 = wire(&mut m, "x2", Box::new(square()), &[x]);
        let x3 = wire(&mut m, "x3", Box::new(mul()), &[x2, x]);
        let kx3 = wire(&mut m, "kx3", Box::new(mul()), &[x3, ck]);
        let inner = wire(&mut m, "inner", Box::new(add()), &[x, kx3]);
        let scaled = wire(&mut m, "scaled", Box::new(mul()), &[inner, cs]);
        let t = wire(&mut m, "tanh", Box::new(tanh()), &[scaled]);
        let t1 = wire(&mut m, "plus_one", Box::new(add()), &[t, one]);
        let out = wire(&mut m, "gelu", Box::new(mul()), &[hx, t1]);
        let outputs = if tanh_is_output { vec![out, t] } else { vec![out] };
        m.select_output_outlets(&outputs).unwrap();
        m
    }

    fn input() -> Tensor {
        // −6..6: both tails and the curved middle.
        let values: Vec<f32> = (0..2 * 5 * 3072).map(|i| (i as f32 / 30719.0) * 12.0 - 6.0).collect();
        Tensor::from_shape(&[2, 5, 3072], &values).unwrap()
    }

    fn run(model: TypedModel) -> Vec<f32> {
        let out = model.into_runnable().unwrap().run(tvec!(input().into_tvalue())).unwrap().remove(0);
        out.to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    #[test]
    fn gelu_chain_becomes_one_operator_with_the_same_values() {
        let model = graph(0.044715, false).into_decluttered().unwrap();
        let reference = run(model.clone().into_optimized().unwrap());
        let mut fused_model = model;
        assert_eq!(fuse(&mut fused_model).unwrap(), 1);
        assert_eq!(fused_model.nodes().len(), 2, "{fused_model}");
        let fused = run(fused_model.into_optimized().unwrap());
        // tract's tanh is a rational approximation either way; the two orders of operations
        // differ by a few ulps of values up to 6.
        let worst = reference.iter().zip(&fused).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 2e-6, "largest difference {worst}");
        // And both are the formula, computed here in f64.
        let x = input();
        for (&v, &got) in x.to_plain_array_view::<f32>().unwrap().iter().zip(&fused) {
            let v = v as f64;
            let want = 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh());
            assert!((got as f64 - want).abs() < 1e-5, "gelu({v}) = {got}, expected {want}");
        }
    }

    #[test]
    fn other_coefficients_and_shared_intermediates_are_left_alone() {
        let mut other = graph(0.05, false).into_decluttered().unwrap();
        assert_eq!(fuse(&mut other).unwrap(), 0);
        let mut shared = graph(0.044715, true).into_decluttered().unwrap();
        assert_eq!(fuse(&mut shared).unwrap(), 0);
    }
}
