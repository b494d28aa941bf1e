//! The ClipCap mapping networks as ONNX graphs: `image_embeds` [N, E] → `prefix` [N, P, D],
//! the P "prefix" embeddings GPT-2 reads before the caption tokens.
//!
//! Two architectures exist in ClipCap (rmokady/CLIP_prefix_caption):
//! - MLP: Linear(E → P·D/2), Tanh, Linear(→ P·D), reshaped to [N, P, D];
//! - Transformer: Linear(E → C·D) reshaped to C "clip tokens", followed by P learned constant
//!   tokens; `num_layers` pre-LN transformer layers (8 heads, bias-free q/kv projections, ReLU
//!   MLP of width 2D, no mask); the output is the last P positions.
//!
//! Weight names are the `clip_project.*` tensors of a ClipCap checkpoint without that prefix.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use tract_onnx::pb;

use super::builder::{Dim, Elem, GraphBuilder};
use crate::models::mapper::{matrix, MapperConfig, MapperKind, LAYER_NORM_EPS};
use crate::tensor::{Tensor, TensorMap};

/// Builds the mapper graph; every tensor's shape is checked against `cfg`.
pub fn build(cfg: &MapperConfig, w: &TensorMap) -> Result<pb::ModelProto> {
    cfg.validate()?;
    let mut g = GraphBuilder::new("clipcap_mapper");
    let emb = g.input("image_embeds", Elem::F32, &[Dim::sym("batch"), cfg.embed_dim.into()])?;
    let prefix = match cfg.kind {
        MapperKind::Mlp => mlp(&mut g, cfg, w, &emb)?,
        MapperKind::Transformer => transformer(&mut g, cfg, w, &emb)?,
    };
    let dims = [Dim::sym("batch"), cfg.prefix_length.into(), cfg.hidden_size.into()];
    g.output(&prefix, "prefix", Elem::F32, &dims)?;
    Ok(g.finish())
}

/// DeCap's `clip_project`: one `Linear(E → D)` (weights `model.0.*`) giving a one-token prefix,
/// `image_embeds` [N, E] (the projected embedding) → `prefix` [N, 1, D].
pub fn build_decap(w: &TensorMap) -> Result<(pb::ModelProto, usize, usize)> {
    let (_, hidden, embed_dim) = matrix(w, "model.0.weight")?;
    let expected: BTreeSet<&str> = ["model.0.weight", "model.0.bias"].into();
    if let Some(extra) = w.names().find(|n| !expected.contains(*n)) {
        bail!("unexpected tensor `clip_project.{extra}` in a DeCap projection (only model.0.weight/bias)");
    }
    let mut g = GraphBuilder::new("decap_projection");
    let emb = g.input("image_embeds", Elem::F32, &[Dim::sym("batch"), embed_dim.into()])?;
    let h = g.linear(&emb, w, "model.0", (embed_dim, hidden), true)?;
    let prefix = g.reshape(&h, "prefix_tokens", &[0, 1, hidden as i64]);
    g.output(&prefix, "prefix", Elem::F32, &[Dim::sym("batch"), 1.into(), hidden.into()])?;
    Ok((g.finish(), embed_dim, hidden))
}

fn mlp(g: &mut GraphBuilder, cfg: &MapperConfig, w: &TensorMap, x: &str) -> Result<String> {
    let out = cfg.prefix_length * cfg.hidden_size;
    let h = g.linear(x, w, "model.0", (cfg.embed_dim, out / 2), true)?;
    let h = g.node("Tanh", "model.1", &[&h], vec![]);
    let h = g.linear(&h, w, "model.2", (out / 2, out), true)?;
    Ok(g.reshape(&h, "prefix_tokens", &[0, cfg.prefix_length as i64, cfg.hidden_size as i64]))
}

fn transformer(g: &mut GraphBuilder, cfg: &MapperConfig, w: &TensorMap, x: &str) -> Result<String> {
    let (d, c, p) = (cfg.hidden_size, cfg.clip_length, cfg.prefix_length);
    let h = g.linear(x, w, "linear", (cfg.embed_dim, c * d), true)?;
    let h = g.reshape(&h, "clip_tokens", &[0, c as i64, d as i64]);

    // cat(clip tokens, prefix_const broadcast over the batch): pad P empty slots after the clip
    // tokens and add a table that is zero on the clip rows and prefix_const below (exact in f32),
    // which avoids computing the batch size inside the graph.
    let prefix_const = w.get_shaped("prefix_const", &[p, d])?;
    let mut table = vec![0f32; c * d];
    table.extend_from_slice(&prefix_const.data);
    let table = Tensor::new(vec![c + p, d], table)?;
    let pads = g.const_i64(&[0, 0, 0, 0, p as i64, 0]);
    let h = g.node("Pad", "tokens_with_prefix_slots", &[&h, &pads], vec![]);
    let table = g.initializer("prefix_const_table", &table);
    let mut h = g.add(&h, &table, "tokens");

    for i in 0..cfg.num_layers {
        h = layer(g, cfg, w, &h, &format!("transformer.layers.{i}"))
            .with_context(|| format!("mapper transformer layer {i}"))?;
    }
    let starts = g.const_i64(&[c as i64]);
    let ends = g.const_i64(&[(c + p) as i64]);
    let axes = g.const_i64(&[1]);
    Ok(g.node("Slice", "prefix_tokens", &[&h, &starts, &ends, &axes], vec![]))
}

/// x + attn(norm1(x)), then + mlp(norm2(x)).
fn layer(g: &mut GraphBuilder, cfg: &MapperConfig, w: &TensorMap, x: &str, p: &str) -> Result<String> {
    let d = cfg.hidden_size;
    let h = g.layer_norm(x, w, &format!("{p}.norm1"), d, LAYER_NORM_EPS)?;
    let h = attention(g, cfg, w, &h, &format!("{p}.attn"))?;
    let x = g.add(x, &h, &format!("{p}.attn_residual"));

    let h = g.layer_norm(&x, w, &format!("{p}.norm2"), d, LAYER_NORM_EPS)?;
    let h = g.linear(&h, w, &format!("{p}.mlp.fc1"), (d, 2 * d), true)?;
    let h = g.node("Relu", &format!("{p}.mlp.act"), &[&h], vec![]);
    let h = g.linear(&h, w, &format!("{p}.mlp.fc2"), (2 * d, d), true)?;
    Ok(g.add(&x, &h, &format!("{p}.mlp_residual")))
}

/// ClipCap's `MultiHeadAttention` used as self-attention: one Linear makes keys and values,
/// its outputs laid out as [2, heads, head_dim] (keys first).
fn attention(g: &mut GraphBuilder, cfg: &MapperConfig, w: &TensorMap, x: &str, p: &str) -> Result<String> {
    let (d, heads) = (cfg.hidden_size, cfg.num_heads);
    let hd = d / heads;
    let q = g.linear(x, w, &format!("{p}.to_queries"), (d, d), false)?;
    let q = g.split_heads(&q, &format!("{p}.q"), heads, hd);

    let kv = g.linear(x, w, &format!("{p}.to_keys_values"), (d, 2 * d), false)?;
    let kv = g.reshape(&kv, &format!("{p}.kv_split"), &[0, 0, 2, heads as i64, hd as i64]);
    let kv = g.transpose(&kv, &format!("{p}.kv_heads"), &[2, 0, 3, 1, 4]); // [2, N, H, T, hd]
    let k = g.pick(&kv, &format!("{p}.k"), 0, 0);
    let v = g.pick(&kv, &format!("{p}.v"), 0, 1);

    let ctx = g.attention(p, (&q, &k, &v), (hd as f32).powf(-0.5), None);
    let ctx = g.merge_heads(&ctx, &format!("{p}.merged"), d);
    g.linear(&ctx, w, &format!("{p}.project"), (d, d), true)
}
