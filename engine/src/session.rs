//! Per-caption decoder state: the KV cache and the next position.
//!
//! Cheap to create (an empty cache); one per caption, or one per beam group. The model it runs
//! on stays immutable and shareable.

use tract_onnx::prelude::*;

use crate::error::EngineError;
use crate::model::{tensor_from, CaptionModel};

pub struct DecoderState<'m> {
    model: &'m CaptionModel,
    cache: Cache,
    position: usize,
}

impl<'m> DecoderState<'m> {
    /// An empty cache for `batch` sequences.
    pub fn new(model: &'m CaptionModel, batch: usize) -> Result<DecoderState<'m>, EngineError> {
        Ok(DecoderState { model, cache: model.new_cache(batch)?, position: 0 })
    }

    /// The token id of logit `index` of this model's decoder.
    pub fn token_of_logit(&self, index: usize) -> u32 {
        self.model.token_of_logit(index)
    }

    /// Positions already in the cache.
    pub fn position(&self) -> usize {
        self.position
    }

    fn batch(&self) -> usize {
        self.cache.batch()
    }

    /// Runs `seq` new embeddings per sequence (`embeds` is [batch × seq × hidden] row-major) and
    /// returns the logits of each sequence's last position, [batch × vocab].
    pub fn feed_embeddings(&mut self, embeds: &[f32], seq: usize) -> Result<Vec<f32>, EngineError> {
        let d = self.model.dims();
        if self.position + seq > d.max_positions {
            return Err(EngineError::Option(format!(
                "sequence of {} positions exceeds the decoder's {} positions",
                self.position + seq,
                d.max_positions
            )));
        }
        let input = tensor_from(&[self.batch(), seq, d.hidden_size], embeds, "decoder")?;
        let logits = self.model.decoder_step(input, self.position, &mut self.cache)?;
        self.position += seq;
        crate::model::to_vec(&logits, "decoder")
    }

    /// Feeds one token per sequence.
    pub fn feed_tokens(&mut self, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
        if ids.len() != self.batch() {
            return Err(EngineError::Option(format!("{} tokens for {} sequences", ids.len(), self.batch())));
        }
        let mut embeds = Vec::with_capacity(ids.len() * self.model.dims().hidden_size);
        for &id in ids {
            self.model.push_token_embedding(id, &mut embeds)?;
        }
        self.feed_embeddings(&embeds, 1)
    }

    /// Rebuilds the cache so that sequence `i` continues from old sequence `sources[i]`
    /// (beam search: reorder survivors, or fan one prefix out to several beams).
    pub fn reorder(&mut self, sources: &[usize]) -> Result<(), EngineError> {
        self.cache.reorder(sources)
    }
}

/// Where a decoding session's KV cache lives.
pub(crate) enum Cache {
    /// In the decoder plan's [`crate::kv_cache::LayerCache`]s, in this session of the plan.
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
                crate::kv_cache::reorder(session, sources).map_err(err)?;
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
