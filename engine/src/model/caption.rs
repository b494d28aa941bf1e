//! One image in, one caption out: preprocess → image encoder → mapper → decoding → text. The
//! rest of [`CaptionModel`]'s methods, those a caller uses; loading and the graphs' runs are in
//! the parent module.

use std::time::{Duration, Instant};

use image::RgbImage;

use super::CaptionModel;
use crate::error::EngineError;
use crate::generate::{generate, GenerationOptions};
use crate::preprocess::preprocess;
use crate::session::DecoderState;
use crate::stage;

/// Wall time per stage of one caption.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTimings {
    pub preprocess: Duration,
    pub image_encoder: Duration,
    pub mapper: Duration,
    /// All of decoding, the first token included.
    pub decoder: Duration,
    /// The part of `decoder` until the first token: the prefix fed and the first token chosen.
    pub first_token: Duration,
}

impl StageTimings {
    pub fn total(&self) -> Duration {
        self.preprocess + self.image_encoder + self.mapper + self.decoder
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    pub text: String,
    /// Generated token ids, the stop token included when one was reached.
    pub tokens: Vec<u32>,
    pub timings: StageTimings,
}

/// Every intermediate of one caption, for tracing against a reference implementation.
#[derive(Debug, Clone)]
pub struct Trace {
    pub pixel_values: Vec<f32>,
    pub image_embeds: Vec<f32>,
    /// DeCap: the image embedding projected onto the support memory (the mapper's input).
    pub projected: Option<Vec<f32>>,
    pub prefix: Vec<f32>,
    /// Logits predicting the first token (at the last prefix position).
    pub logits_step0: Vec<f32>,
    pub caption: Caption,
}

impl CaptionModel {
    /// Generation options from the bundle's defaults.
    pub fn default_options(&self) -> GenerationOptions {
        let g = &self.manifest.generation;
        GenerationOptions {
            max_tokens: g.max_tokens,
            beam_width: g.beam_width,
            stop_token_ids: g.stop_token_ids.clone(),
            projection_top_k: None,
        }
    }

    /// Checks that `opts` fits this model (positions, vocabulary).
    pub fn check_options(&self, opts: &GenerationOptions) -> Result<(), EngineError> {
        let d = self.dims();
        opts.validate()?;
        if d.prefix_length + opts.max_tokens > d.max_positions {
            return Err(EngineError::Option(format!(
                "max tokens {} + prefix {} exceed the decoder's {} positions",
                opts.max_tokens, d.prefix_length, d.max_positions
            )));
        }
        if let Some(t) = opts.stop_token_ids.iter().find(|&&t| t as usize >= d.vocab_size) {
            return Err(EngineError::Option(format!("stop token {t} is outside the vocabulary of {}", d.vocab_size)));
        }
        Ok(())
    }

    /// Captions one decoded image.
    pub fn caption(&self, image: &RgbImage, opts: &GenerationOptions) -> Result<Caption, EngineError> {
        Ok(self.trace(image, opts)?.caption)
    }

    /// Captions one image and keeps every intermediate tensor.
    pub fn trace(&self, image: &RgbImage, opts: &GenerationOptions) -> Result<Trace, EngineError> {
        self.check_options(opts)?;
        let mut timings = StageTimings::default();
        stage::edgecap_stage_preprocess();
        let t = Instant::now();
        let pixel_values = preprocess(image, &self.manifest.preprocess);
        timings.preprocess = t.elapsed();
        stage::edgecap_stage_encoder();
        let t = Instant::now();
        let image_embeds = self.embed_image(&pixel_values)?;
        timings.image_encoder = t.elapsed();
        stage::edgecap_stage_mapper();
        let t = Instant::now();
        let projected = self.project(&image_embeds, opts);
        let prefix = self.map_prefix(projected.as_deref().unwrap_or(&image_embeds))?;
        timings.mapper = t.elapsed();
        stage::edgecap_stage_first_token();
        let t = Instant::now();
        let generated = generate(&mut DecoderState::new(self, 1)?, &prefix, self.dims().prefix_length, opts)?;
        timings.decoder = t.elapsed();
        timings.first_token = generated.first_token_time;
        stage::edgecap_stage_detokenize();
        let (tokens, logits_step0) = (generated.tokens, generated.first_logits);
        let text = self.tokenizer.decode(&tokens)?;
        stage::edgecap_stage_caption_end();
        let caption = Caption { text, tokens, timings };
        Ok(Trace { pixel_values, image_embeds, projected, prefix, logits_step0, caption })
    }

    /// DeCap's projection onto the support memory; `None` for ClipCap bundles.
    pub fn project(&self, image_embeds: &[f32], opts: &GenerationOptions) -> Option<Vec<f32>> {
        let (memory, decap) = (self.memory.as_ref()?, self.manifest.decap.as_ref()?);
        let top_k = opts.projection_top_k.unwrap_or(decap.top_k);
        Some(memory.project(image_embeds, decap.temperature, (top_k > 0).then_some(top_k)))
    }
}
