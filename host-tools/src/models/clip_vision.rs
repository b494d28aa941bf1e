//! The CLIP vision tower's configuration (as transformers' `CLIPVisionConfig` reads it) and
//! weight names; the ONNX graph is `onnx::clip_vision`, the trainable model `train::clip`.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use super::hf_config::{check_shape, read_section, usize_field};

/// The MLP activation of the encoder layers (`hidden_act` in the HF config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `quick_gelu`: x·sigmoid(1.702x), used by OpenAI's CLIP checkpoints.
    QuickGelu,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
}

/// The shape of a CLIP vision tower: transformers' `CLIPVisionConfig` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub projection_dim: usize,
    pub layer_norm_eps: f32,
    pub hidden_act: Activation,
}

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig` defaults (ViT-B/32).
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            projection_dim: 512,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
        }
    }
}

impl ClipVisionConfig {
    /// Reads an HF CLIP `config.json`: `vision_config` plus the top-level `projection_dim`.
    /// A bare vision config (no `vision_config` key) is accepted too. Missing fields take
    /// the `CLIPVisionConfig` defaults, because `save_pretrained` may omit default values.
    pub fn from_hf_config(config_json: &Value) -> Result<Self> {
        let (vision, path) = match config_json.get("vision_config") {
            Some(v) => (v, "vision_config."),
            None => (config_json, ""),
        };
        let mut cfg: ClipVisionConfig = read_section(vision, path)?;
        // CLIPConfig keeps the projection's width at the top level.
        cfg.projection_dim = usize_field(config_json, "", "projection_dim", cfg.projection_dim)?;
        if let Some(c) = vision.get("num_channels").and_then(Value::as_u64) {
            if c != 3 {
                bail!("config field `{path}num_channels` = {c}: only RGB (3) images are supported");
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects shapes the graph cannot be built for.
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("projection_dim", self.projection_dim),
        ];
        check_shape("CLIP vision config", &nonzero, self.hidden_size, self.num_attention_heads)?;
        if !self.image_size.is_multiple_of(self.patch_size) {
            bail!(
                "CLIP vision config: image_size {} is not a multiple of patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        Ok(())
    }

    /// Tokens the encoder sees: one per patch plus the class token.
    pub fn num_positions(&self) -> usize {
        let grid = self.image_size / self.patch_size;
        grid * grid + 1
    }

    pub(crate) fn encoder_shape(&self) -> EncoderShape {
        EncoderShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
        }
    }
}

/// What a CLIP transformer layer needs to know; the vision and text towers share the layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub eps: f32,
    pub act: Activation,
}

/// The weights of encoder layer `p` (`…encoder.layers.N`).
pub(crate) fn encoder_layer_weight_names(p: &str) -> Vec<String> {
    let mut names = Vec::new();
    for m in [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "layer_norm1",
        "mlp.fc1",
        "mlp.fc2",
        "layer_norm2",
    ] {
        names.push(format!("{p}.{m}.weight"));
        names.push(format!("{p}.{m}.bias"));
    }
    names
}

/// The weights `build` reads, for callers that want to report unused tensors.
pub fn weight_names(cfg: &ClipVisionConfig) -> Vec<String> {
    let mut names: Vec<String> = [
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.pre_layrnorm.bias",
        "vision_model.post_layernorm.weight",
        "vision_model.post_layernorm.bias",
        "visual_projection.weight",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..cfg.num_hidden_layers {
        names.extend(encoder_layer_weight_names(&format!("vision_model.encoder.layers.{i}")));
    }
    names
}
