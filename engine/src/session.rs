//! Per-caption decoder state: the KV cache and the next position.
//!
//! Cheap to create (an empty cache); one per caption, or one per beam group. The model it runs
//! on stays immutable and shareable.

use crate::error::EngineError;
use crate::kv_cache::Cache;
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
