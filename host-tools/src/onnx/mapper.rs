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
use crate::tensor::{Tensor, TensorMap};

/// ClipCap always builds its transformer mapper with 8 heads.
pub const CLIPCAP_HEADS: usize = 8;
/// `nn.LayerNorm`'s default epsilon, which ClipCap's transformer keeps.
const LAYER_NORM_EPS: f32 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapperKind {
    Mlp,
    Transformer,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapperConfig {
    pub kind: MapperKind,
    /// E: the CLIP projection dim (the mapper's input width).
    pub embed_dim: usize,
    /// D: the language model's `n_embd`.
    pub hidden_size: usize,
    /// P: how many prefix embeddings the mapper produces.
    pub prefix_length: usize,
    /// C: clip tokens made by the transformer mapper's input Linear (0 for the MLP).
    pub clip_length: usize,
    /// Transformer layers (0 for the MLP).
    pub num_layers: usize,
    /// Attention heads ([`CLIPCAP_HEADS`] in every ClipCap checkpoint).
    pub num_heads: usize,
}

impl MapperConfig {
    fn validate(&self) -> Result<()> {
        if self.embed_dim == 0 || self.hidden_size == 0 || self.prefix_length == 0 {
            bail!("mapper config has a zero size: {self:?}");
        }
        if self.kind == MapperKind::Transformer
            && (self.clip_length == 0 || self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads))
        {
            bail!(
                "transformer mapper: hidden size {} must be a multiple of {} heads and clip_length {} non-zero",
                self.hidden_size,
                self.num_heads,
                self.clip_length
            );
        }
        Ok(())
    }

    /// Every tensor name the mapper needs, in a stable order.
    pub fn weight_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        match self.kind {
            MapperKind::Mlp => {
                for l in ["model.0", "model.2"] {
                    names.push(format!("{l}.weight"));
                    names.push(format!("{l}.bias"));
                }
            }
            MapperKind::Transformer => {
                names.extend(["linear.weight", "linear.bias", "prefix_const"].map(String::from));
                for i in 0..self.num_layers {
                    let p = format!("transformer.layers.{i}");
                    for n in ["norm1.weight", "norm1.bias", "attn.to_queries.weight", "attn.to_keys_values.weight"] {
                        names.push(format!("{p}.{n}"));
                    }
                    for n in ["attn.project", "norm2", "mlp.fc1", "mlp.fc2"] {
                        names.push(format!("{p}.{n}.weight"));
                        names.push(format!("{p}.{n}.bias"));
                    }
                }
            }
        }
        names
    }
}

/// Works out the mapper's architecture from its tensors (names without `clip_project.`) and the
/// language model's width. Unexpected or missing tensors are errors naming them.
pub fn infer_config(w: &TensorMap, lm_hidden: usize, key_prefix: &str) -> Result<MapperConfig> {
    if lm_hidden == 0 {
        bail!("language model hidden size is 0");
    }
    let cfg = if w.contains("model.0.weight") {
        infer_mlp(w, lm_hidden)?
    } else if w.contains("linear.weight") || w.contains("prefix_const") {
        infer_transformer(w, lm_hidden)?
    } else {
        bail!("mapper weights have neither `model.0.weight` (MLP) nor `linear.weight` (transformer)");
    };
    let expected: BTreeSet<String> = cfg.weight_names().into_iter().collect();
    if let Some(extra) = w.names().find(|n| !expected.contains(*n)) {
        bail!("unexpected tensor `{key_prefix}{extra}` in {:?} mapper weights", cfg.kind);
    }
    if let Some(missing) = expected.iter().find(|n| !w.contains(n)) {
        bail!("missing tensor `{key_prefix}{missing}` in {:?} mapper weights", cfg.kind);
    }
    Ok(cfg)
}

fn matrix<'a>(w: &'a TensorMap, name: &str) -> Result<(&'a Tensor, usize, usize)> {
    let t = w.get(name)?;
    match t.shape[..] {
        [rows, cols] => Ok((t, rows, cols)),
        _ => bail!("tensor `{name}` has shape {:?}, expected a matrix", t.shape),
    }
}

fn infer_mlp(w: &TensorMap, d: usize) -> Result<MapperConfig> {
    let (_, hidden, embed_dim) = matrix(w, "model.0.weight")?;
    let (_, out, _) = matrix(w, "model.2.weight")?;
    if out % d != 0 {
        bail!("tensor `model.2.weight` has {out} outputs, not a multiple of the language model width {d}");
    }
    let prefix_length = out / d;
    if hidden != out / 2 {
        bail!("tensor `model.0.weight` has {hidden} outputs, expected {} (half of P·D = {out})", out / 2);
    }
    Ok(MapperConfig {
        kind: MapperKind::Mlp,
        embed_dim,
        hidden_size: d,
        prefix_length,
        clip_length: 0,
        num_layers: 0,
        num_heads: 0,
    })
}

fn infer_transformer(w: &TensorMap, d: usize) -> Result<MapperConfig> {
    let (_, rows, embed_dim) = matrix(w, "linear.weight")?;
    let (_, prefix_length, width) = matrix(w, "prefix_const")?;
    if width != d {
        bail!("tensor `prefix_const` is {width} wide, but the language model width is {d}");
    }
    if rows % d != 0 {
        bail!("tensor `linear.weight` has {rows} outputs, not a multiple of the language model width {d}");
    }
    // Layers are numbered 0..n; the key check in `infer_config` catches gaps.
    let num_layers = w
        .names()
        .filter_map(|n| n.strip_prefix("transformer.layers."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    Ok(MapperConfig {
        kind: MapperKind::Transformer,
        embed_dim,
        hidden_size: d,
        prefix_length,
        clip_length: rows / d,
        num_layers,
        num_heads: CLIPCAP_HEADS,
    })
}

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
