//! The CLIP image encoder (ViT) as an ONNX graph: `pixel_values` [N, 3, S, S] → `image_embeds`
//! [N, projection_dim], i.e. transformers' `CLIPModel.get_image_features` (not normalised).
//!
//! Weights are named as in a transformers `CLIPModel.save_pretrained` safetensors file
//! (`vision_model.*`, `visual_projection.weight`); text-tower tensors in the same file are ignored.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tract_onnx::pb;

use super::builder::{attr_ints, Dim, Elem, GraphBuilder};
use crate::tensor::TensorMap;

/// The MLP activation of the encoder layers (`hidden_act` in the HF config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `quick_gelu`: x·sigmoid(1.702x), used by OpenAI's CLIP checkpoints.
    QuickGelu,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
}

/// The shape of a CLIP vision tower.
#[derive(Debug, Clone, PartialEq)]
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
        let d = ClipVisionConfig::default();
        let int = |key: &str, default: usize| usize_field(vision, path, key, default);
        let projection_dim = match config_json.get("projection_dim") {
            Some(v) if !v.is_null() => {
                usize_field(config_json, "", "projection_dim", 0).with_context(|| format!("bad projection_dim {v}"))?
            }
            _ => int("projection_dim", d.projection_dim)?,
        };
        let layer_norm_eps = layer_norm_eps(vision, path, d.layer_norm_eps)?;
        let hidden_act = activation(vision, path)?;
        if let Some(c) = vision.get("num_channels").and_then(Value::as_u64) {
            if c != 3 {
                bail!("config field `{path}num_channels` = {c}: only RGB (3) images are supported");
            }
        }
        let cfg = ClipVisionConfig {
            hidden_size: int("hidden_size", d.hidden_size)?,
            intermediate_size: int("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: int("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: int("num_attention_heads", d.num_attention_heads)?,
            image_size: int("image_size", d.image_size)?,
            patch_size: int("patch_size", d.patch_size)?,
            projection_dim,
            layer_norm_eps,
            hidden_act,
        };
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

/// `layer_norm_eps` of a CLIP tower config, `default` when absent.
pub(crate) fn layer_norm_eps(tower: &Value, path: &str, default: f32) -> Result<f32> {
    match tower.get("layer_norm_eps") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            Ok(v.as_f64().with_context(|| format!("config field `{path}layer_norm_eps` is not a number: {v}"))? as f32)
        }
    }
}

/// `hidden_act` of a CLIP tower config (quick_gelu when absent, as in OpenAI's checkpoints).
pub(crate) fn activation(tower: &Value, path: &str) -> Result<Activation> {
    Ok(match tower.get("hidden_act").and_then(Value::as_str) {
        None | Some("quick_gelu") => Activation::QuickGelu,
        Some("gelu") => Activation::Gelu,
        Some(other) => bail!("config field `{path}hidden_act` = {other:?} is not supported (quick_gelu or gelu)"),
    })
}

/// Reads a non-negative integer field, falling back to `default` when absent or null.
pub(crate) fn usize_field(obj: &Value, path: &str, key: &str, default: usize) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("config field `{path}{key}` is not a non-negative integer: {v}")),
    }
}

/// Builds the image encoder graph from `w` (checked against `cfg`, tensor by tensor).
pub fn build(cfg: &ClipVisionConfig, w: &TensorMap) -> Result<pb::ModelProto> {
    cfg.validate()?;
    let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
    let mut g = GraphBuilder::new("clip_vision");
    let s = cfg.image_size;
    let pixels = g.input("pixel_values", Elem::F32, &[Dim::sym("batch"), 3.into(), s.into(), s.into()])?;

    let mut x = embeddings(&mut g, cfg, w, &pixels)?;
    x = g.layer_norm(&x, w, "vision_model.pre_layrnorm", d, eps)?;
    for i in 0..cfg.num_hidden_layers {
        x = encoder_layer(&mut g, cfg.encoder_shape(), w, &x, &format!("vision_model.encoder.layers.{i}"), None)?;
    }

    // The pooled output is the class token (position 0) after the final LayerNorm.
    let cls = g.pick(&x, "vision_model.pooled", 1, 0);
    let pooled = g.layer_norm(&cls, w, "vision_model.post_layernorm", d, eps)?;
    let embeds = g.linear(&pooled, w, "visual_projection", (d, cfg.projection_dim), false)?;
    g.output(&embeds, "image_embeds", Elem::F32, &[Dim::sym("batch"), cfg.projection_dim.into()])?;
    Ok(g.finish())
}

/// Patch embedding (a stride-p convolution), class token and position embeddings → [N, T, D].
fn embeddings(g: &mut GraphBuilder, cfg: &ClipVisionConfig, w: &TensorMap, pixels: &str) -> Result<String> {
    let (d, p, t) = (cfg.hidden_size, cfg.patch_size, cfg.num_positions());
    let conv_w = w.get_shaped("vision_model.embeddings.patch_embedding.weight", &[d, 3, p, p])?;
    let class = w.get_shaped("vision_model.embeddings.class_embedding", &[d])?;
    let positions = w.get_shaped("vision_model.embeddings.position_embedding.weight", &[t, d])?;

    let conv_w = g.initializer("vision_model.embeddings.patch_embedding.weight", conv_w);
    let pk = p as i64;
    let patches = g.node(
        "Conv",
        "vision_model.embeddings.patch_embedding",
        &[pixels, &conv_w],
        vec![attr_ints("kernel_shape", &[pk, pk]), attr_ints("strides", &[pk, pk])],
    );
    // [N, D, g, g] → [N, g², D]
    let patches = g.reshape(&patches, "vision_model.embeddings.patches_flat", &[0, d as i64, -1]);
    let patches = g.transpose(&patches, "vision_model.embeddings.patches", &[0, 2, 1]);

    // The class token is the same for every image, so instead of broadcasting it to the batch
    // and concatenating, pad an empty slot in front of the patches and add one table that holds
    // class_embedding + position 0 in row 0 and the position embeddings below. The sums are the
    // very same f32 additions as in PyTorch (0 + x is exact).
    let pads = g.const_i64(&[0, 1, 0, 0, 0, 0]);
    let tokens = g.node("Pad", "vision_model.embeddings.with_class_slot", &[&patches, &pads], vec![]);
    let mut table = positions.clone();
    for (cell, c) in table.data[..d].iter_mut().zip(&class.data) {
        *cell += *c;
    }
    let table = g.initializer("vision_model.embeddings.class_and_positions", &table);
    Ok(g.add(&tokens, &table, "vision_model.embeddings"))
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

/// One pre-LN encoder layer: x + attn(ln1(x)), then + mlp(ln2(x)); `bias` masks attention
/// (the text tower's causal mask), broadcast against [N, H, S, S] scores.
pub(crate) fn encoder_layer(
    g: &mut GraphBuilder,
    shape: EncoderShape,
    w: &TensorMap,
    x: &str,
    p: &str,
    bias: Option<&str>,
) -> Result<String> {
    let (d, eps) = (shape.hidden, shape.eps);
    let h = g.layer_norm(x, w, &format!("{p}.layer_norm1"), d, eps)?;
    let h = self_attention(g, shape, w, &h, &format!("{p}.self_attn"), bias)?;
    let x = g.add(x, &h, &format!("{p}.attn_residual"));

    let h = g.layer_norm(&x, w, &format!("{p}.layer_norm2"), d, eps)?;
    let h = g.linear(&h, w, &format!("{p}.mlp.fc1"), (d, shape.intermediate), true)?;
    let h = match shape.act {
        Activation::QuickGelu => g.quick_gelu(&h, &format!("{p}.mlp.act")),
        Activation::Gelu => g.gelu_erf(&h, &format!("{p}.mlp.act")),
    };
    let h = g.linear(&h, w, &format!("{p}.mlp.fc2"), (shape.intermediate, d), true)?;
    Ok(g.add(&x, &h, &format!("{p}.mlp_residual")))
}

/// Multi-head self-attention with separate q/k/v projections.
fn self_attention(
    g: &mut GraphBuilder,
    shape: EncoderShape,
    w: &TensorMap,
    x: &str,
    p: &str,
    bias: Option<&str>,
) -> Result<String> {
    let (d, heads) = (shape.hidden, shape.heads);
    let hd = d / heads;
    let mut project = |name: &str| -> Result<String> {
        let y = g.linear(x, w, &format!("{p}.{name}"), (d, d), true)?;
        Ok(g.split_heads(&y, &format!("{p}.{name}.heads"), heads, hd))
    };
    let (q, k, v) = (project("q_proj")?, project("k_proj")?, project("v_proj")?);
    let ctx = g.attention(p, (&q, &k, &v), (hd as f32).powf(-0.5), bias);
    let ctx = g.merge_heads(&ctx, &format!("{p}.merged"), d);
    g.linear(&ctx, w, &format!("{p}.out_proj"), (d, d), true)
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

/// The checks both CLIP towers' configs need: no zero size, heads dividing the width.
pub(crate) fn check_shape(what: &str, nonzero: &[(&str, usize)], hidden: usize, heads: usize) -> Result<()> {
    if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
        bail!("{what}: {name} is 0");
    }
    if !hidden.is_multiple_of(heads) {
        bail!("{what}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
    }
    Ok(())
}
