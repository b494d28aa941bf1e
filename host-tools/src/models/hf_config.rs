//! Reading Hugging Face `config.json` fields: absent or null fields take transformers' defaults
//! (`save_pretrained` may omit them), and a wrong type is an error naming the field.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// `layer_norm_eps` of a CLIP tower config, `default` when absent.
pub(crate) fn layer_norm_eps(tower: &Value, path: &str, default: f32) -> Result<f32> {
    match tower.get("layer_norm_eps") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            Ok(v.as_f64().with_context(|| format!("config field `{path}layer_norm_eps` is not a number: {v}"))? as f32)
        }
    }
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
