//! CLIP's two towers (transformers' `CLIPModel`) for training, named as its checkpoints name
//! them (`vision_model.*`, `text_model.*`, `visual_projection.weight`, `text_projection.weight`,
//! `logit_scale`), so a trained model is an HF CLIP directory the exporter and the support
//! memory builder read like a downloaded one.

use anyhow::Result;
use candle_core::Tensor;

use super::layers::{
    add_bias, attention, causal_bias, matmul_2d, merge_heads, quick_gelu, split_heads, LayerNorm, Linear,
};
use super::params::{Init, Params};
use crate::models::clip_text::ClipTextConfig;
use crate::models::clip_vision::{Activation, ClipVisionConfig, EncoderShape};

/// CLIP's initial temperature: logit_scale = ln(1 / 0.07).
pub const LOGIT_SCALE_INIT: f32 = 2.6592;
const INIT_STD: f32 = 0.02;

/// One pre-LN encoder layer (`CLIPEncoderLayer`).
struct EncoderLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln1: LayerNorm,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn new(p: &mut Params, name: &str, s: &EncoderShape) -> Result<EncoderLayer> {
        let d = s.hidden;
        let lin = |p: &mut Params, n: &str, dims| Linear::new(p, &format!("{name}.{n}"), dims, true, INIT_STD);
        Ok(EncoderLayer {
            q: lin(p, "self_attn.q_proj", (d, d))?,
            k: lin(p, "self_attn.k_proj", (d, d))?,
            v: lin(p, "self_attn.v_proj", (d, d))?,
            out: lin(p, "self_attn.out_proj", (d, d))?,
            ln1: LayerNorm::new(p, &format!("{name}.layer_norm1"), d, s.eps)?,
            ln2: LayerNorm::new(p, &format!("{name}.layer_norm2"), d, s.eps)?,
            fc1: lin(p, "mlp.fc1", (d, s.intermediate))?,
            fc2: lin(p, "mlp.fc2", (s.intermediate, d))?,
            heads: s.heads,
            act: s.act,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        let heads = |l: &Linear| split_heads(&l.forward(&h)?, self.heads);
        let ctx = attention(&heads(&self.q)?, &heads(&self.k)?, &heads(&self.v)?, mask)?;
        let x = (x + self.out.forward(&merge_heads(&ctx)?)?)?;
        let h = self.fc1.forward(&self.ln2.forward(&x)?)?;
        let h = match self.act {
            Activation::QuickGelu => quick_gelu(&h)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        Ok((&x + self.fc2.forward(&h)?)?)
    }
}

pub struct ClipVision {
    pub config: ClipVisionConfig,
    patch: Tensor,
    class: Tensor,
    positions: Tensor,
    pre_ln: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_ln: LayerNorm,
    projection: Linear,
}

impl ClipVision {
    pub fn new(p: &mut Params, cfg: &ClipVisionConfig) -> Result<ClipVision> {
        let (d, pk) = (cfg.hidden_size, cfg.patch_size);
        let e = "vision_model.embeddings";
        let shape = cfg.encoder_shape();
        Ok(ClipVision {
            config: cfg.clone(),
            patch: p.get(&format!("{e}.patch_embedding.weight"), &[d, 3, pk, pk], Init::Normal(INIT_STD))?,
            class: p.get(&format!("{e}.class_embedding"), &[d], Init::Normal(INIT_STD))?,
            positions: p.get(
                &format!("{e}.position_embedding.weight"),
                &[cfg.num_positions(), d],
                Init::Normal(INIT_STD),
            )?,
            pre_ln: LayerNorm::new(p, "vision_model.pre_layrnorm", d, cfg.layer_norm_eps)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(p, &format!("vision_model.encoder.layers.{i}"), &shape))
                .collect::<Result<_>>()?,
            post_ln: LayerNorm::new(p, "vision_model.post_layernorm", d, cfg.layer_norm_eps)?,
            projection: Linear::new(p, "visual_projection", (d, cfg.projection_dim), false, INIT_STD)?,
        })
    }

    /// Image embeddings [B, projection_dim] (not normalised) of `pixels` [B, 3, S, S].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, _, s, _) = pixels.dims4()?;
        let (pk, d) = (self.config.patch_size, self.config.hidden_size);
        let g = s / pk;
        // The stride-P convolution as a matmul over flattened (channel, y, x) patches.
        let patches = pixels.reshape((b, 3, g, pk, g, pk))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((
            b,
            g * g,
            3 * pk * pk,
        ))?;
        let tokens = matmul_2d(&patches, &self.patch.reshape((d, 3 * pk * pk))?.t()?)?;
        let class = self.class.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let mut x = add_bias(&Tensor::cat(&[&class, &tokens], 1)?, &self.positions)?;
        x = self.pre_ln.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, None)?;
        }
        let pooled = self.post_ln.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        self.projection.forward(&pooled)
    }
}

pub struct ClipText {
    pub config: ClipTextConfig,
    tokens: Tensor,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    final_ln: LayerNorm,
    projection: Linear,
}

impl ClipText {
    pub fn new(p: &mut Params, cfg: &ClipTextConfig) -> Result<ClipText> {
        let d = cfg.hidden_size;
        let e = "text_model.embeddings";
        let shape = cfg.encoder_shape();
        Ok(ClipText {
            config: cfg.clone(),
            tokens: p.get(&format!("{e}.token_embedding.weight"), &[cfg.vocab_size, d], Init::Normal(INIT_STD))?,
            positions: p.get(
                &format!("{e}.position_embedding.weight"),
                &[cfg.max_position_embeddings, d],
                Init::Normal(0.01),
            )?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(p, &format!("text_model.encoder.layers.{i}"), &shape))
                .collect::<Result<_>>()?,
            final_ln: LayerNorm::new(p, "text_model.final_layer_norm", d, cfg.layer_norm_eps)?,
            projection: Linear::new(p, "text_projection", (d, cfg.projection_dim), false, INIT_STD)?,
        })
    }

    /// Text embeddings [B, projection_dim] of `ids` [B, S] (u32, padded after the end token),
    /// pooled at `pooled` [B] (u32 flat indices b·S + position of b's end token).
    pub fn forward(&self, ids: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let d = self.config.hidden_size;
        let x = self.tokens.index_select(&ids.flatten_all()?, 0)?.reshape((b, s, d))?;
        let mut x = add_bias(&x, &self.positions.narrow(0, 0, s)?)?;
        let mask = causal_bias(s, ids.device())?;
        for layer in &self.layers {
            x = layer.forward(&x, Some(&mask))?;
        }
        let x = self.final_ln.forward(&x)?.reshape((b * s, d))?;
        self.projection.forward(&x.index_select(pooled, 0)?)
    }
}

/// The learned temperature of the contrastive loss.
pub fn logit_scale(p: &mut Params) -> Result<Tensor> {
    p.get("logit_scale", &[], Init::Const(LOGIT_SCALE_INIT))
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
    }
}

/// `config.json` of the trained model, as transformers' `CLIPConfig` writes it.
pub fn hf_config_json(vision: &ClipVisionConfig, text: &ClipTextConfig, bos: u32, eos: u32) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": vision.projection_dim,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "num_channels": 3,
            "projection_dim": vision.projection_dim,
            "layer_norm_eps": vision.layer_norm_eps,
            "hidden_act": act_name(vision.hidden_act),
        },
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": text.vocab_size,
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "max_position_embeddings": text.max_position_embeddings,
            "projection_dim": text.projection_dim,
            "layer_norm_eps": text.layer_norm_eps,
            "hidden_act": act_name(text.hidden_act),
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": 0,
        },
    })
}
