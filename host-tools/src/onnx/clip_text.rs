//! The CLIP text encoder as an ONNX graph: transformers' `CLIPModel.get_text_features` (the
//! causal text transformer, final LayerNorm, the hidden state at the end-of-text token,
//! `text_projection`; not normalised). DeCap's support memory is made of these embeddings.
//!
//! Graph I/O (N captions padded to S tokens; both symbolic):
//! - `input_ids` i64 [N, S]: CLIP token ids (start token first, end token, then padding);
//! - `position_ids` i64 [S]: 0..S-1;
//! - `attention_bias` f32 [S, S]: the causal mask, 0 on and below the diagonal, -inf above;
//! - `pooled_index` i64 [N]: n·S + (position of caption n's end token), the row pooled;
//! - output `text_embeds` f32 [N, projection_dim].
//!
//! The host computes the small index tensors, as the engine does for the decoder, which keeps
//! the graph free of shape arithmetic. Weights are named as in a `CLIPModel` safetensors file
//! (`text_model.*`, `text_projection.weight`).

use anyhow::{bail, Result};
use serde_json::Value;
use tract_onnx::pb;

use super::builder::{attr_int, Dim, Elem, GraphBuilder};
use super::clip_vision::{
    activation, encoder_layer, encoder_layer_weight_names, layer_norm_eps, usize_field, Activation, EncoderShape,
};
use crate::tensor::TensorMap;

/// The shape of a CLIP text tower.
#[derive(Debug, Clone, PartialEq)]
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
        let path = "text_config.";
        let d = ClipTextConfig::default();
        let int = |key: &str, default: usize| usize_field(text, path, key, default);
        let cfg = ClipTextConfig {
            vocab_size: int("vocab_size", d.vocab_size)?,
            hidden_size: int("hidden_size", d.hidden_size)?,
            intermediate_size: int("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: int("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: int("num_attention_heads", d.num_attention_heads)?,
            max_position_embeddings: int("max_position_embeddings", d.max_position_embeddings)?,
            projection_dim: usize_field(config_json, "", "projection_dim", d.projection_dim)?,
            layer_norm_eps: layer_norm_eps(text, path, d.layer_norm_eps)?,
            hidden_act: activation(text, path)?,
        };
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
        super::clip_vision::check_shape("CLIP text config", &nonzero, self.hidden_size, self.num_attention_heads)?;
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

/// Builds the text encoder graph from `w` (checked against `cfg`, tensor by tensor).
pub fn build(cfg: &ClipTextConfig, w: &TensorMap) -> Result<pb::ModelProto> {
    cfg.validate()?;
    let d = cfg.hidden_size;
    let (n, s) = (Dim::sym("batch"), Dim::sym("seq"));
    let mut g = GraphBuilder::new("clip_text");
    let ids = g.input("input_ids", Elem::I64, &[n.clone(), s.clone()])?;
    let positions = g.input("position_ids", Elem::I64, std::slice::from_ref(&s))?;
    let bias = g.input("attention_bias", Elem::F32, &[s.clone(), s.clone()])?;
    let pooled_index = g.input("pooled_index", Elem::I64, std::slice::from_ref(&n))?;

    let tokens = w.get_shaped("text_model.embeddings.token_embedding.weight", &[cfg.vocab_size, d])?;
    let table = w.get_shaped("text_model.embeddings.position_embedding.weight", &[cfg.max_position_embeddings, d])?;
    let tokens = g.initializer("text_model.embeddings.token_embedding.weight", tokens);
    let table = g.initializer("text_model.embeddings.position_embedding.weight", table);
    let tok = g.node("Gather", "text_model.embeddings.tokens", &[&tokens, &ids], vec![attr_int("axis", 0)]);
    let pos = g.node("Gather", "text_model.embeddings.positions", &[&table, &positions], vec![attr_int("axis", 0)]);
    let mut x = g.add(&tok, &pos, "text_model.embeddings");
    for i in 0..cfg.num_hidden_layers {
        let p = format!("text_model.encoder.layers.{i}");
        x = encoder_layer(&mut g, cfg.encoder_shape(), w, &x, &p, Some(&bias))?;
    }
    let x = g.layer_norm(&x, w, "text_model.final_layer_norm", d, cfg.layer_norm_eps)?;
    let rows = g.reshape(&x, "text_model.rows", &[-1, d as i64]);
    let pooled = g.node("Gather", "text_model.pooled", &[&rows, &pooled_index], vec![attr_int("axis", 0)]);
    let embeds = g.linear(&pooled, w, "text_projection", (d, cfg.projection_dim), false)?;
    g.output(&embeds, "text_embeds", Elem::F32, &[n, cfg.projection_dim.into()])?;
    Ok(g.finish())
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
