//! ClipCap's mapping networks: which one a checkpoint holds and its sizes, inferred from the
//! `clip_project.*` weights; the ONNX graphs are `onnx::mapper`.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

use crate::tensor::{Tensor, TensorMap};

/// ClipCap always builds its transformer mapper with 8 heads.
pub const CLIPCAP_HEADS: usize = 8;

/// `nn.LayerNorm`'s default epsilon, which ClipCap's transformer keeps.
pub(crate) const LAYER_NORM_EPS: f32 = 1e-5;

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
    pub(crate) fn validate(&self) -> Result<()> {
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

pub(crate) fn matrix<'a>(w: &'a TensorMap, name: &str) -> Result<(&'a Tensor, usize, usize)> {
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
