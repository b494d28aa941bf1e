//! Per-caption decoder state: the KV cache and the next position.
//!
//! Cheap to create (an empty cache); one per caption, or one per beam group. The model it runs
//! on stays immutable and shareable.

use tract_onnx::prelude::*;

use crate::error::EngineError;
use crate::model::{tensor_from, CaptionModel};

pub struct DecoderState<'m> {
    model: &'m CaptionModel,
    /// [L, 2, B, H, position, hd]
    past: Tensor,
    position: usize,
}

impl<'m> DecoderState<'m> {
    /// An empty cache for `batch` sequences.
    pub fn new(model: &'m CaptionModel, batch: usize) -> Result<DecoderState<'m>, EngineError> {
        let d = model.dims();
        let shape = [d.num_layers, 2, batch, d.num_heads, 0, d.head_dim()];
        let past = Tensor::zero::<f32>(&shape).map_err(|e| EngineError::inference("decoder", e))?;
        Ok(DecoderState { model, past, position: 0 })
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
        self.past.shape()[2]
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
        let past = std::mem::take(&mut self.past);
        let (logits, present) = self.model.decoder_step(input, self.position, past)?;
        self.past = present;
        self.position += seq;
        let view = logits.to_plain_array_view::<f32>().map_err(|e| EngineError::inference("decoder", e))?;
        Ok(view.iter().copied().collect())
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
        let view = self.past.to_plain_array_view::<f32>().map_err(|e| EngineError::inference("decoder", e))?;
        let picked = view.select(tract_ndarray::Axis(2), sources);
        self.past = picked.into_tensor();
        Ok(())
    }
}
