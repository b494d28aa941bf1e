//! The decoder's KV cache kept inside the plan, next to the attention that reads it.
//!
//! Why: a decoder bundle's graph takes the cache as an input (`past` [L, 2, B, H, P, hd]) and
//! returns it grown (`present`). Run that way, every decoding step copies the whole cache four
//! times: each layer picks its slice of `past`, concatenates the new position, picks keys and
//! values apart again, and the graph stacks all layers into `present`. That is ~0.2 ms of a
//! 2.4 ms int8 step on the benchmark machine, and grows with the caption.
//!
//! `fuse::kv_cache` rewrites that plumbing, when a graph has exactly it, into one [`CachedAttention`]
//! per layer. Each keeps its layer's keys and values as per-session state in buffers with room
//! to grow, appends the new positions in place and attends over them where they lie; `past`
//! and `present` leave the graph. A graph without the pattern keeps its cache outside, as
//! before (`session::DecoderState` serves both).

use tract_onnx::tract_core::plan::LaneId;
use tract_onnx::tract_hir::internal::*;

use crate::attention::{FusedAttention, Operand};
use crate::error::EngineError;

/// A [`FusedAttention`] whose keys and values come from its own per-session cache.
/// Inputs: q, the new positions' keys and values `[2, B, H, S, hd]`, and the bias if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CachedAttention {
    pub(crate) attention: FusedAttention,
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
