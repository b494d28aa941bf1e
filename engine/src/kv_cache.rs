//! The decoder's KV cache kept inside the plan, next to the attention that reads it.
//!
//! Why: a decoder bundle's graph takes the cache as an input (`past` [L, 2, B, H, P, hd]) and
//! returns it grown (`present`). Run that way, every decoding step copies the whole cache four
//! times: each layer picks its slice of `past`, concatenates the new position, picks keys and
//! values apart again, and the graph stacks all layers into `present`. That is ~0.2 ms of a
//! 2.4 ms int8 step on the benchmark machine, and grows with the caption.
//!
//! [`fuse`] rewrites that plumbing, when a graph has exactly it, into one [`CachedAttention`]
//! per layer. Each keeps its layer's keys and values as per-session state in buffers with room
//! to grow, appends the new positions in place and attends over them where they lie; `past`
//! and `present` leave the graph. A graph without the pattern keeps its cache outside, as
//! before (`session::DecoderState` serves both).

use tract_onnx::tract_core::ops::array::{Gather, TypedConcat};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::plan::LaneId;
use tract_onnx::tract_hir::internal::*;

use crate::attention::{FusedAttention, Operand};
use crate::error::EngineError;

/// A [`FusedAttention`] whose keys and values come from its own per-session cache.
/// Inputs: q, the new positions' keys and values `[2, B, H, S, hd]`, and the bias if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CachedAttention {
    attention: FusedAttention,
}

impl Op for CachedAttention {
    fn name(&self) -> StaticName {
        "CachedAttention".into()
    }

    op_as_typed_op!();
}

impl EvalOp for CachedAttention {
    not_out_of_plan!();

    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(Some(Box::new(LayerCache::default())))
    }
}

impl TypedOp for CachedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[1].rank() == 5, "CachedAttention: new keys and values must be [2, B, H, S, hd]");
        // The output is q's layout with v's channels, which are the new values' channels.
        let q = inputs[0];
        let new = &inputs[1].shape;
        let v = f32::fact([new[1].clone(), new[2].clone(), new[3].clone(), new[4].clone()]);
        self.attention.output_facts(&[q, &v, &v])
    }

    as_op!();
}

/// One layer's keys and values for one session: each `[batch, head, capacity, channel]`, the
/// first `len` positions of each head filled. Capacity doubles when full, so a caption of T
/// tokens moves each position O(1) times on average rather than T times.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    keys: Vec<f32>,
    values: Vec<f32>,
    batch: usize,
    heads: usize,
    channels: usize,
    capacity: usize,
    len: usize,
}

impl LayerCache {
    /// Sequence `i` continues from old sequence `sources[i]` (beam search).
    pub fn reorder(&mut self, sources: &[usize]) -> TractResult<()> {
        if let Some(bad) = sources.iter().find(|&&s| s >= self.batch) {
            bail!("CachedAttention: no sequence {bad} to continue from, the cache holds {}", self.batch);
        }
        let per_item = self.heads * self.capacity * self.channels;
        let pick = |data: &[f32]| -> Vec<f32> {
            sources.iter().flat_map(|&s| &data[s * per_item..(s + 1) * per_item]).copied().collect()
        };
        (self.keys, self.values) = (pick(&self.keys), pick(&self.values));
        self.batch = sources.len();
        Ok(())
    }

    /// Appends new keys and values, each `[batch, head, seq, channel]` with `dims` those sizes.
    fn append(&mut self, keys: &[f32], values: &[f32], [batch, heads, seq, channels]: [usize; 4]) -> TractResult<()> {
        if self.len == 0 {
            (self.batch, self.heads, self.channels) = (batch, heads, channels);
        }
        ensure!(
            (batch, heads, channels) == (self.batch, self.heads, self.channels),
            "CachedAttention: new positions [{batch}, {heads}, _, {channels}] for a cache of [{}, {}, _, {}]",
            self.batch,
            self.heads,
            self.channels
        );
        if self.len + seq > self.capacity {
            self.grow((self.len + seq).max(2 * self.capacity));
        }
        let row = seq * channels;
        for (data, new) in [(&mut self.keys, keys), (&mut self.values, values)] {
            for (head, chunk) in new.chunks_exact(row).enumerate() {
                let at = (head * self.capacity + self.len) * channels;
                data[at..at + row].copy_from_slice(chunk);
            }
        }
        self.len += seq;
        Ok(())
    }

    fn grow(&mut self, capacity: usize) {
        let filled = self.len * self.channels;
        let (old, new) = (self.capacity * self.channels, capacity * self.channels);
        let size = self.batch * self.heads * new;
        let regrow = |data: &[f32]| {
            let mut grown = vec![0f32; size];
            if filled > 0 {
                for (head, chunk) in data.chunks_exact(old).enumerate() {
                    grown[head * new..head * new + filled].copy_from_slice(&chunk[..filled]);
                }
            }
            grown
        };
        (self.keys, self.values, self.capacity) = (regrow(&self.keys), regrow(&self.values), capacity);
    }

    fn operand<'a>(&self, data: &'a [f32]) -> Operand<'a> {
        let c = self.channels;
        Operand {
            values: data,
            strides: [self.heads * self.capacity * c, self.capacity * c, c],
            sizes: [self.batch, self.heads, self.len],
            channels: c,
        }
    }
}

impl OpState for LayerCache {
    fn eval(&mut self, _ctx: &EvalContext, op: &dyn Op, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = op.downcast_ref::<CachedAttention>().context("LayerCache serves CachedAttention")?;
        let new = &inputs[1];
        let shape = new.shape();
        ensure!(
            shape.len() == 5 && shape[0] == 2 && new.datum_type() == f32::datum_type(),
            "CachedAttention: new keys and values {shape:?} {:?}, expected f32 [2, B, H, S, hd]",
            new.datum_type()
        );
        let values = new.try_as_plain_ram()?.as_slice::<f32>()?;
        let (keys, vals) = values.split_at(values.len() / 2);
        self.append(keys, vals, [shape[1], shape[2], shape[3], shape[4]])?;
        let (k, v) = (self.operand(&self.keys), self.operand(&self.values));
        let out = op.attention.attend(&inputs[0], k, v, inputs.get(2).map(|b| &**b))?;
        Ok(tvec!(out.into_tvalue()))
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        *self = LayerCache::default();
        Ok(())
    }
}

/// Sequence `i` of every layer's cache in `session` (of a plan [`fuse`] rewrote) continues
/// from old sequence `sources[i]`: beam search's reordering, or one prefix fanned out to
/// several beams.
pub fn reorder(session: &mut TypedSimpleState, sources: &[usize]) -> TractResult<()> {
    for state in session.op_states.iter_mut().flatten() {
        if let Some(layer) = state.downcast_mut::<LayerCache>() {
            layer.reorder(sources)?;
        }
    }
    Ok(())
}

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
        crate::splice::splice(model, name, CachedAttention { attention }, &inputs, OutletId::new(layer.attention, 0))?;
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

/// Where a decoding session's KV cache lives.
pub(crate) enum Cache {
    /// In the decoder plan's [`LayerCache`]s, in this session of the plan.
    Inside { session: TypedSimpleState, batch: usize },
    /// Fed to the graph as `past` [L,2,B,H,P,hd] and returned grown as `present`.
    Outside(Tensor),
}

impl Cache {
    pub(crate) fn batch(&self) -> usize {
        match self {
            Cache::Inside { batch, .. } => *batch,
            Cache::Outside(past) => past.shape()[2],
        }
    }

    /// Sequence `i` continues from old sequence `sources[i]`.
    pub(crate) fn reorder(&mut self, sources: &[usize]) -> Result<(), EngineError> {
        let err = |e| EngineError::inference("decoder", e);
        match self {
            Cache::Inside { session, batch } => {
                reorder(session, sources).map_err(err)?;
                *batch = sources.len();
            }
            Cache::Outside(past) => {
                let view = past.to_plain_array_view::<f32>().map_err(err)?;
                *past = view.select(tract_ndarray::Axis(2), sources).into_tensor();
            }
        }
        Ok(())
    }
}
