//! The CLIP image encoder (ViT) as an ONNX graph: `pixel_values` [N, 3, S, S] → `image_embeds`
//! [N, projection_dim], i.e. transformers' `CLIPModel.get_image_features` (not normalised).
//!
//! Weights are named as in a transformers `CLIPModel.save_pretrained` safetensors file
//! (`vision_model.*`, `visual_projection.weight`); text-tower tensors in the same file are ignored.

use anyhow::Result;
use tract_onnx::pb;

use super::builder::{attr_ints, Dim, Elem, GraphBuilder};
use crate::models::clip_vision::{Activation, ClipVisionConfig, EncoderShape};
use crate::tensor::TensorMap;

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
