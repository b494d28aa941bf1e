//! Graph passes over parsed [`Int8MatMul`]s, run by the loader after tract's decluttering: the
//! LM head's rescale folded into its product, column blocks merged back into one product, every
//! weight packed once for the kernel.

use std::sync::Arc;

use tract_onnx::tract_hir::internal::*;

use super::op::{Block, Int8MatMul, Output, Weights};

/// Readies a parsed graph's products for the kernel: column blocks merged ([`merge_blocks`]),
/// then every weight packed, each dropping its parsed blocks as soon as it is packed. Returns the
/// number of merges.
pub fn prepare(model: &mut TypedModel) -> TractResult<usize> {
    let merged = merge_blocks(model)?;
    for id in 0..model.nodes().len() {
        let Some(op) = model.node(id).op_as::<Int8MatMul>() else { continue };
        if let Weights::Blocks(_) = &*op.weights {
            let packed = Weights::Packed(op.weights.packed(op.kernel.layout())?.into_owned());
            let op = Int8MatMul { weights: Arc::new(packed), ..op.clone() };
            model.node_mut(id).op = Box::new(op);
        }
    }
    Ok(merged)
}

/// Folds `Cast` to f32 then `Mul` by a constant (one value per column, or one for all) into the
/// product before them, in a decluttered graph; returns how many. On GPT-2's LM head the `Mul`
/// alone took ~0.16 ms of each int8 decoding step (50257 logits through tract's broadcasting
/// `Mul`), three times the rescale done inside the product.
pub fn fuse_scales(model: &mut TypedModel) -> TractResult<usize> {
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::cast::Cast;
    let mut fused = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<Int8MatMul>().filter(|op| op.output == Output::Sums) else { continue };
        let n = op.weights.n();
        let Some(cast) =
            model.single_succ(id)?.filter(|c| c.op_as::<Cast>().is_some_and(|c| c.to == f32::datum_type()))
        else {
            continue;
        };
        let Some(mul) = model.single_succ(cast.id)? else { continue };
        let is_mul = mul.op_as::<TypedBinOp>().is_some_and(|b| b.0.name() == "Mul" && b.1.is_none());
        let outputs = model.output_outlets()?;
        if !is_mul || mul.inputs.len() != 2 || [id, cast.id].iter().any(|&i| outputs.contains(&OutletId::new(i, 0))) {
            continue;
        }
        let other = if mul.inputs[0].node == cast.id { mul.inputs[1] } else { mul.inputs[0] };
        let Some(konst) = model.outlet_fact(other)?.konst.clone() else { continue };
        // One scale per output column (any leading axes of size 1), or a single one.
        let shape = konst.shape();
        let per_column = shape.last() == Some(&n) && shape.iter().rev().skip(1).all(|&d| d == 1);
        if konst.datum_type() != f32::datum_type() || !(per_column || konst.len() == 1) {
            continue;
        }
        // A constant of higher rank than the product would add axes: not a rescale.
        if shape.len() > model.outlet_fact(node.inputs[0])?.rank() {
            continue;
        }
        let values = konst.try_as_plain_ram()?.as_slice::<f32>()?;
        let scales: Arc<[f32]> = if per_column { values.into() } else { vec![values[0]; n].into() };
        let fused_op = Int8MatMul { output: Output::Scaled { scales }, ..op.clone() };
        let (name, input) = (format!("{}.scaled", node.name), node.inputs[0]);
        crate::fuse::splice(model, name, fused_op, &[input], OutletId::new(mul.id, 0))?;
        fused += 1;
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// Fuses the column blocks of each product back into one [`Int8MatMul`].
///
/// `host-tools quantize` cuts weights into blocks of at most 1 MiB for tract's own kernels (its
/// constant-folding budget); for this kernel they are only overhead: one small product each, too
/// small to share between threads. A `Concat` along the last axis of products that read the same
/// activations the same way becomes one product with the blocks' columns side by side.
pub fn merge_blocks(model: &mut TypedModel) -> TractResult<usize> {
    // Dead nodes go first (the initializers the products have packed), then after each merge the
    // blocks it replaced: a weight is never held three times over while the bundle loads.
    model.compact()?;
    let mut merged = 0;
    while let Some((concat, input, op)) = next_merge(model)? {
        let name = format!("{}.merged", model.node(concat).name);
        crate::fuse::splice(model, name, op, &[input], OutletId::new(concat, 0))?;
        model.compact()?;
        merged += 1;
    }
    Ok(merged)
}

/// The first `Concat` of blocks that can merge: its node, the blocks' input, the merged product.
fn next_merge(model: &TypedModel) -> TractResult<Option<(usize, OutletId, Int8MatMul)>> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(concat) = node.op_as::<tract_onnx::tract_core::ops::array::TypedConcat>() else { continue };
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        if concat.axis + 1 != rank || node.inputs.len() < 2 {
            continue;
        }
        let blocks: Vec<(&Int8MatMul, OutletId)> = node
            .inputs
            .iter()
            .filter_map(|o| {
                let producer = model.node(o.node);
                producer.op_as::<Int8MatMul>().map(|op| (op, producer.inputs[0]))
            })
            .collect();
        let (first, input) = match blocks.first() {
            Some(b) if blocks.len() == node.inputs.len() => *b,
            _ => continue,
        };
        let same = |op: &Int8MatMul| op.kernel == first.kernel && op.a_zero == first.a_zero;
        if !blocks.iter().all(|(op, i)| *i == input && same(op) && op.output.joins(&first.output)) {
            continue;
        }
        // Only wired, unpacked blocks merge (packing comes after merging).
        let weights: Option<Vec<Vec<Arc<Block>>>> = blocks
            .iter()
            .map(|(op, _)| match &*op.weights {
                Weights::Blocks(b) => Some(b.clone()),
                Weights::Input { .. } | Weights::Packed(_) => None,
            })
            .collect();
        let Some(weights) = weights.map(|w| w.concat()) else { continue };
        let output = Output::join(&first.output, blocks.iter().map(|(op, _)| &op.output));
        let weights = Arc::new(Weights::Blocks(weights));
        return Ok(Some((id, input, Int8MatMul { kernel: first.kernel, weights, a_zero: first.a_zero, output })));
    }
    Ok(None)
}
