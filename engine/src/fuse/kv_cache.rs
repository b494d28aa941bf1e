//! Rewrites a decoder's cache plumbing (`past` in, `present` out, each layer's slices and
//! concatenations), when a graph has exactly it, into one [`CachedAttention`] per layer; the
//! operator and why are in `crate::kv_cache`.

use tract_onnx::tract_core::ops::array::{Gather, TypedConcat};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_hir::internal::*;

use crate::attention::FusedAttention;
use crate::kv_cache::CachedAttention;

/// Moves the cache into the plan if `model` (decluttered, attentions fused) has the decoder
/// bundles' cache plumbing, every layer of it; returns whether it did. The graph then has no
/// `past` input and no `present` output.
pub fn fuse(model: &mut TypedModel) -> TractResult<bool> {
    let Some(found) = Plumbing::find(model)? else { return Ok(false) };
    for layer in &found.layers {
        let node = model.node(layer.attention);
        let attention = node.op_as::<FusedAttention>().context("fused attention")?.clone();
        let mut inputs = vec![node.inputs[0], layer.new];
        inputs.extend(node.inputs.get(3).copied());
        let name = format!("{}.cached", node.name);
        crate::fuse::splice(model, name, CachedAttention { attention }, &inputs, OutletId::new(layer.attention, 0))?;
    }
    model.inputs.retain(|&i| i != found.past);
    model.outputs.retain(|&o| o != found.present);
    model.compact()?;
    Ok(true)
}

/// The cache plumbing of a decoder graph, as tract leaves it decluttered: per layer i,
/// `kv = Concat[axis 3](Gather(past, i), new)`, the fused attention reading `Gather(kv, 0)` and
/// `Gather(kv, 1)`, and `present = Concat[axis 0](AddAxis(kv) of every layer, in order)`.
struct Plumbing {
    past: OutletId,
    present: OutletId,
    layers: Vec<Layer>,
}

struct Layer {
    /// The fused attention node.
    attention: usize,
    /// The new positions' keys and values, `[2, B, H, S, hd]`.
    new: OutletId,
    /// Which layer of `past` it reads, and `past` itself.
    index: i64,
    past: OutletId,
    /// Its cache with the layer axis added, and the `present` that stacks it.
    stacked: OutletId,
    present: OutletId,
}

impl Plumbing {
    fn find(model: &TypedModel) -> TractResult<Option<Plumbing>> {
        let mut layers = Vec::new();
        for node in model.nodes() {
            let Some(op) = node.op_as::<FusedAttention>() else { continue };
            let Some(layer) = Layer::at(model, node, op)? else { return Ok(None) };
            layers.push(layer);
        }
        let Some(first) = layers.first() else { return Ok(None) };
        let (past, present) = (first.past, first.present);
        // One `past` read by nothing else, one `present` stacking the layers' caches in order.
        layers.sort_by_key(|l| l.index);
        let stacked: Vec<OutletId> = layers.iter().map(|l| l.stacked).collect();
        if layers.iter().enumerate().any(|(i, l)| l.index != i as i64 || l.past != past || l.present != present)
            || model.node(present.node).inputs != stacked
            || model.outlet_successors(past).len() != layers.len()
            || !model.input_outlets()?.contains(&past)
            || model.output_outlets()?.iter().filter(|&&o| o == present).count() != 1
        {
            return Ok(None);
        }
        Ok(Some(Plumbing { past, present, layers }))
    }
}

impl Layer {
    /// The cache plumbing around one fused attention, if it is a decoder layer's.
    fn at(model: &TypedModel, node: &TypedNode, op: &FusedAttention) -> TractResult<Option<Layer>> {
        if !op.reads_heads_by_position() {
            return Ok(None);
        }
        // k and v: picks 0 and 1 of the same concatenation, read by this attention only.
        let (Some((kv, 0)), Some((kv_v, 1))) = (pick(model, node.inputs[1])?, pick(model, node.inputs[2])?) else {
            return Ok(None);
        };
        let concat = model.node(kv.node);
        let Some(c) = concat.op_as::<TypedConcat>() else { return Ok(None) };
        if kv != kv_v || c.axis != 3 || concat.inputs.len() != 2 {
            return Ok(None);
        }
        let Some((past, index)) = pick(model, concat.inputs[0])? else { return Ok(None) };
        // The concatenation feeds the two picks and one AddAxis(0) into `present`.
        let succ = model.outlet_successors(kv);
        let added: Vec<&TypedNode> = succ.iter().map(|s| model.node(s.node)).filter(|n| n.op_is::<AxisOp>()).collect();
        let [add] = added[..] else { return Ok(None) };
        if succ.len() != 3 || add.op_as::<AxisOp>() != Some(&AxisOp::Add(0)) {
            return Ok(None);
        }
        let Some(stack) = model.single_succ(add.id)? else { return Ok(None) };
        if stack.op_as::<TypedConcat>().map(|c| c.axis) != Some(0) {
            return Ok(None);
        }
        Ok(Some(Layer {
            attention: node.id,
            new: concat.inputs[1],
            index,
            past,
            stacked: OutletId::new(add.id, 0),
            present: OutletId::new(stack.id, 0),
        }))
    }
}

/// If `outlet` is `Gather(axis 0)` of a constant scalar index, read by one node: what it picks
/// from and the index.
fn pick(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(OutletId, i64)>> {
    let node = model.node(outlet.node);
    let Some(gather) = node.op_as::<Gather>() else { return Ok(None) };
    if gather.axis != 0 || model.outlet_successors(outlet).len() != 1 {
        return Ok(None);
    }
    let index = model.outlet_fact(node.inputs[1])?.konst.clone();
    let index = index.filter(|t| t.rank() == 0).and_then(|t| t.cast_to_scalar::<i64>().ok());
    Ok(index.map(|i| (node.inputs[0], i)))
}
