//! GPT-2's configuration, as an HF `config.json` gives it or a checkpoint's weights imply; the
//! ONNX graph is `onnx::gpt2`, the trainable model `train::gpt2`.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use super::hf_config::read_section;

/// transformers' `GPT2Config` fields the graph depends on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub layer_norm_epsilon: f32,
}

impl Default for Gpt2Config {
    /// transformers' `GPT2Config` defaults (the 124M "gpt2").
    fn default() -> Self {
        Gpt2Config {
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            vocab_size: 50257,
            n_positions: 1024,
            layer_norm_epsilon: 1e-5,
        }
    }
}

impl Gpt2Config {
    /// Reads an HF GPT-2 `config.json`; missing fields take the `GPT2Config` defaults. Variants
    /// the graph does not implement (another activation, unscaled or layer-scaled attention)
    /// are refused rather than silently computed wrong.
    pub fn from_hf_config(config_json: &Value) -> Result<Self> {
        match config_json.get("activation_function").and_then(Value::as_str) {
            None | Some("gelu_new") | Some("gelu_pytorch_tanh") => {}
            Some(other) => {
                bail!("config field `activation_function` = {other:?} is not supported (gelu_new)")
            }
        }
        let flag = |key: &str| config_json.get(key).and_then(Value::as_bool);
        if flag("scale_attn_weights") == Some(false) {
            bail!("config field `scale_attn_weights` = false is not supported");
        }
        if flag("scale_attn_by_inverse_layer_idx") == Some(true) {
            bail!("config field `scale_attn_by_inverse_layer_idx` = true is not supported");
        }
        let cfg: Gpt2Config = read_section(config_json, "")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.n_embd == 0 || self.n_head == 0 || self.vocab_size == 0 || self.n_positions == 0 {
            bail!("GPT-2 config has a zero size: {self:?}");
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!("GPT-2 config: n_embd {} is not a multiple of n_head {}", self.n_embd, self.n_head);
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Every tensor name the decoder graph needs.
    pub fn weight_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            ["wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"].map(String::from).to_vec();
        for i in 0..self.n_layer {
            for m in ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"] {
                names.push(format!("h.{i}.{m}.weight"));
                names.push(format!("h.{i}.{m}.bias"));
            }
        }
        names
    }
}
