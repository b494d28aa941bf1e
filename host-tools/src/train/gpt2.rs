//! GPT-2 (transformers' `GPT2LMHeadModel`) for training: weights named as in its checkpoints
//! (`transformer.h.0.attn.c_attn.weight`, … and an untied `lm_head.weight`), so the exporter's
//! GPT-2 reader takes a trained model as it takes a downloaded one.

use anyhow::Result;
use candle_core::{Tensor, D};

use super::layers::{add_bias, attention, causal_bias, gelu_new, merge_heads, split_heads, Conv1D, LayerNorm, Linear};
use super::params::{Init, Params};
use crate::models::gpt2::Gpt2Config;

/// transformers' `initializer_range` for GPT-2.
const INIT_STD: f32 = 0.02;

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    heads: usize,
}

impl Block {
    fn new(p: &mut Params, cfg: &Gpt2Config, name: &str) -> Result<Block> {
        let (d, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        // GPT-2 scales the residual projections' init by 1/sqrt(2·layers).
        let proj_std = INIT_STD / (2.0 * cfg.n_layer as f32).sqrt();
        Ok(Block {
            ln_1: LayerNorm::new(p, &format!("{name}.ln_1"), d, eps)?,
            c_attn: Conv1D::new(p, &format!("{name}.attn.c_attn"), (d, 3 * d), INIT_STD)?,
            attn_proj: Conv1D::new(p, &format!("{name}.attn.c_proj"), (d, d), proj_std)?,
            ln_2: LayerNorm::new(p, &format!("{name}.ln_2"), d, eps)?,
            c_fc: Conv1D::new(p, &format!("{name}.mlp.c_fc"), (d, 4 * d), INIT_STD)?,
            mlp_proj: Conv1D::new(p, &format!("{name}.mlp.c_proj"), (4 * d, d), proj_std)?,
            heads: cfg.n_head,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)?)?;
        let d = x.dim(D::Minus1)?;
        let heads = |i: usize| split_heads(&qkv.narrow(D::Minus1, i * d, d)?, self.heads);
        let ctx = attention(&heads(0)?, &heads(1)?, &heads(2)?, Some(mask))?;
        let x = (x + self.attn_proj.forward(&merge_heads(&ctx)?)?)?;
        let h = gelu_new(&self.c_fc.forward(&self.ln_2.forward(&x)?)?)?;
        Ok((&x + self.mlp_proj.forward(&h)?)?)
    }
}

pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

impl Gpt2 {
    /// Asks `p` for the weights under `prefix` (e.g. `decoder.`): `{prefix}transformer.*` and
    /// `{prefix}lm_head.weight`.
    pub fn new(p: &mut Params, cfg: &Gpt2Config, prefix: &str) -> Result<Gpt2> {
        let (v, d) = (cfg.vocab_size, cfg.n_embd);
        let t = format!("{prefix}transformer");
        let wte = p.get(&format!("{t}.wte.weight"), &[v, d], Init::Normal(INIT_STD))?;
        let wpe = p.get(&format!("{t}.wpe.weight"), &[cfg.n_positions, d], Init::Normal(0.01))?;
        let blocks = (0..cfg.n_layer).map(|i| Block::new(p, cfg, &format!("{t}.h.{i}"))).collect::<Result<_>>()?;
        let ln_f = LayerNorm::new(p, &format!("{t}.ln_f"), d, cfg.layer_norm_epsilon)?;
        let lm_head = Linear::new(p, &format!("{prefix}lm_head"), (d, v), false, INIT_STD)?;
        Ok(Gpt2 { config: cfg.clone(), wte, wpe, blocks, ln_f, lm_head })
    }

    /// Token embeddings [B, S, D] of `ids` [B, S] (u32).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        Ok(self.wte.index_select(&ids.flatten_all()?, 0)?.reshape((b, s, self.config.n_embd))?)
    }

    /// Logits [B, S, V] for `embeds` [B, S, D] at positions 0..S, causally masked.
    pub fn forward_embeds(&self, embeds: &Tensor) -> Result<Tensor> {
        self.logits(&self.hidden(embeds)?)
    }

    /// The final hidden states [B, S, D] (after `ln_f`) for `embeds` [B, S, D].
    pub fn hidden(&self, embeds: &Tensor) -> Result<Tensor> {
        let (_, s, _) = embeds.dims3()?;
        let mut x = add_bias(&embeds, &self.wpe.narrow(0, 0, s)?)?;
        let mask = causal_bias(s, embeds.device())?;
        for block in &self.blocks {
            x = block.forward(&x, &mask)?;
        }
        self.ln_f.forward(&x)
    }

    /// LM-head logits [.., V] of hidden states [.., D]. Trainers apply it only to the positions
    /// that have a target: over a 49k vocabulary the head is most of a step's work.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

/// A GPT-2 config with `n_layer` replaced (a distillation student), as transformers writes it.
pub fn hf_config_json(cfg: &Gpt2Config, eos: Option<u32>) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_positions": cfg.n_positions,
        "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": false,
    })
}
