//! The CLIP text tower's configuration (transformers' `CLIPTextConfig`) and weight names; the
//! ONNX graph is `onnx::clip_text`, the trainable model `train::clip`.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use super::clip_vision::{encoder_layer_weight_names, Activation, EncoderShape};
use super::hf_config::{check_shape, read_section, usize_field};

/// The shape of a CLIP text tower: transformers' `CLIPTextConfig` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub projection_dim: usize,
    pub layer_norm_eps: f32,
    pub hidden_act: Activation,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig` defaults (ViT-B/32's text tower).
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            projection_dim: 512,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
        }
    }
}

impl ClipTextConfig {
    /// Reads an HF CLIP `config.json`: `text_config` plus the top-level `projection_dim`.
    pub fn from_hf_config(config_json: &Value) -> Result<Self> {
        let Some(text) = config_json.get("text_config") else {
            bail!("no `text_config`: not a CLIP model with a text tower");
        };
        let mut cfg: ClipTextConfig = read_section(text, "text_config.")?;
        cfg.projection_dim = usize_field(config_json, "", "projection_dim", cfg.projection_dim)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("projection_dim", self.projection_dim),
        ];
        check_shape("CLIP text config", &nonzero, self.hidden_size, self.num_attention_heads)?;
        Ok(())
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

/// The weights `build` reads.
pub fn weight_names(cfg: &ClipTextConfig) -> Vec<String> {
    let mut names: Vec<String> = [
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight",
        "text_model.final_layer_norm.bias",
        "text_projection.weight",
    ]
    .map(String::from)
    .to_vec();
    for i in 0..cfg.num_hidden_layers {
        names.extend(encoder_layer_weight_names(&format!("text_model.encoder.layers.{i}")));
    }
    names
}
