//! Runs the CLIP vision tower of an HF CLIP directory (built by [`crate::onnx::clip_vision`])
//! through tract, with the preprocessing a bundle made from it would use: photographs in,
//! `get_image_features` embeddings out. ClipCap training embeds its images with it once.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use edgecap_engine::preprocess::{preprocess, PreprocessConfig};
use image::RgbImage;
use prost::Message;
use tract_onnx::prelude::*;

use crate::export::{clip_preprocess, read_clip_vision};
use crate::models::clip_vision::ClipVisionConfig;
use crate::onnx::clip_vision;

pub struct ImageEncoder {
    plan: Arc<TypedRunnableModel>,
    pub config: ClipVisionConfig,
    pub preprocess: PreprocessConfig,
}

impl ImageEncoder {
    pub fn load(clip_dir: &Path) -> Result<ImageEncoder> {
        let (config, weights) = read_clip_vision(clip_dir)?;
        let graph = clip_vision::build(&config, &weights)
            .with_context(|| format!("{}: CLIP vision tower", clip_dir.display()))?;
        let bytes = graph.encode_to_vec();
        let plan = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.into_typed()?.into_optimized()?.into_runnable())
            .with_context(|| format!("{}: CLIP vision tower", clip_dir.display()))?;
        let preprocess = PreprocessConfig { image_size: config.image_size as u32, ..clip_preprocess(clip_dir)? };
        Ok(ImageEncoder { plan, config, preprocess })
    }

    pub fn embed_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// The image embedding (not normalised) of one image.
    pub fn embed(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let s = self.config.image_size;
        let pixels = preprocess(image, &self.preprocess);
        let input = tract_ndarray::Array4::from_shape_vec((1, 3, s, s), pixels)?.into_tensor();
        let out = self.plan.run(tvec!(input.into())).context("CLIP vision tower")?;
        Ok(out[0].to_plain_array_view::<f32>()?.iter().copied().collect())
    }
}
