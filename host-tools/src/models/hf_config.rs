//! Reading Hugging Face `config.json` files into the models' serde configs: absent or null fields
//! take transformers' defaults (`save_pretrained` may omit them), and a wrong type is an error
//! naming the field.

use anyhow::{anyhow, bail, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deserialises one section of a `config.json` (the whole file, or e.g. its `vision_config`)
/// into a model's config: absent and null fields take the config's `Default` (transformers'
/// defaults), unknown fields are ignored, and a wrong type is an error naming the field as
/// `path` + its key.
pub(crate) fn read_section<T: DeserializeOwned>(section: &Value, path: &str) -> Result<T> {
    let mut section = section.clone();
    match &mut section {
        Value::Object(fields) => fields.retain(|_, v| !v.is_null()),
        other => bail!("config `{}` is not an object: {other}", path.trim_end_matches('.')),
    }
    serde_path_to_error::deserialize(section).map_err(|e| anyhow!("config field `{path}{}`: {}", e.path(), e.inner()))
}

/// Reads a non-negative integer field, falling back to `default` when absent or null.
pub(crate) fn usize_field(obj: &Value, path: &str, key: &str, default: usize) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("config field `{path}{key}` is not a non-negative integer: {v}")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::clip_text::ClipTextConfig;
    use crate::models::clip_vision::{Activation, ClipVisionConfig};
    use crate::models::gpt2::Gpt2Config;
    use serde_json::json;

    #[test]
    fn absent_and_null_fields_take_the_defaults() {
        let cfg = ClipVisionConfig::from_hf_config(&json!({"vision_config": {"hidden_size": 96, "num_attention_heads": 4, "layer_norm_eps": null}, "projection_dim": 64})).unwrap();
        let d = ClipVisionConfig::default();
        assert_eq!((cfg.hidden_size, cfg.num_attention_heads, cfg.projection_dim), (96, 4, 64));
        assert_eq!(
            (cfg.image_size, cfg.patch_size, cfg.layer_norm_eps),
            (d.image_size, d.patch_size, d.layer_norm_eps)
        );
        assert_eq!(cfg.hidden_act, Activation::QuickGelu);
        let text =
            ClipTextConfig::from_hf_config(&json!({"text_config": {"hidden_act": "gelu", "vocab_size": 500}})).unwrap();
        assert_eq!((text.hidden_act, text.vocab_size, text.hidden_size), (Activation::Gelu, 500, 512));
        let gpt2 =
            Gpt2Config::from_hf_config(&json!({"n_layer": 6, "n_embd": 128, "n_head": 4, "layer_norm_epsilon": 1e-6}))
                .unwrap();
        assert_eq!((gpt2.n_layer, gpt2.n_embd, gpt2.vocab_size, gpt2.layer_norm_epsilon), (6, 128, 50257, 1e-6));
    }

    #[test]
    fn a_wrong_field_is_named() {
        let e = |r: Result<ClipVisionConfig>| format!("{:#}", r.unwrap_err());
        let msg = e(ClipVisionConfig::from_hf_config(&json!({"vision_config": {"hidden_size": "wide"}})));
        assert!(msg.contains("`vision_config.hidden_size`") && msg.contains("wide"), "{msg}");
        let msg = e(ClipVisionConfig::from_hf_config(&json!({"vision_config": {"hidden_act": "relu"}})));
        assert!(msg.contains("`vision_config.hidden_act`") && msg.contains("relu"), "{msg}");
        let msg = e(ClipVisionConfig::from_hf_config(&json!({"vision_config": {"num_channels": 1}})));
        assert!(msg.contains("num_channels"), "{msg}");
        let msg = e(ClipVisionConfig::from_hf_config(&json!({"vision_config": [1, 2]})));
        assert!(msg.contains("`vision_config` is not an object"), "{msg}");
        let msg =
            format!("{:#}", ClipTextConfig::from_hf_config(&json!({"text_config": {"vocab_size": -3}})).unwrap_err());
        assert!(msg.contains("`text_config.vocab_size`"), "{msg}");
        let msg = format!("{:#}", Gpt2Config::from_hf_config(&json!({"layer_norm_epsilon": "small"})).unwrap_err());
        assert!(msg.contains("`layer_norm_epsilon`"), "{msg}");
    }
}
