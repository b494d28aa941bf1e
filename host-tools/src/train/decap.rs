//! `host-tools train decap`: DeCap's text-only decoder (Li et al., ICLR 2023).
//!
//! Each caption's CLIP text embedding, L2-normalised, becomes a one-token prefix through
//! `clip_project` (Linear embed → hidden); a GPT-2-shaped decoder, trained from scratch on CLIP
//! token ids, learns to read the caption back: the prefix position predicts the start token and
//! each position the next of the first `max_tokens` ids; cross-entropy ignoring id 0 (padding),
//! label smoothing 0.1. The checkpoint is the reference's (`clip_project.model.0.*`,
//! `decoder.*`), so `host-tools export --decap` takes it as it takes the released one.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::cache;
use super::data::{read_captions, Schedule};
use super::gpt2::Gpt2;
use super::layers::{cross_entropy, l2_normalise, Linear};
use super::optim::{AdamW, AdamWConfig};
use super::params::{save_safetensors, Params};
use super::run::{train, RunOptions, RunReport, StepOutput};
use crate::models::gpt2::Gpt2Config;
use crate::progress::Steps;
use crate::tensor;
use crate::text_encoder::TextEncoder;

/// The trained weights, as the exporter reads them.
pub const DECAP_WEIGHTS: &str = "decap.safetensors";
/// Targets per caption in the reference: the first 20 CLIP tokens.
pub const DECAP_TARGET_TOKENS: usize = 20;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct DecapTrainOptions {
    /// HF CLIP directory (its text tower embeds the captions; cached in --out).
    #[arg(long)]
    pub clip: PathBuf,
    /// Captions: one per line, image<TAB>caption lines, or COCO-style JSON.
    #[arg(long)]
    pub captions: PathBuf,
    /// CLIP BPE vocabulary when the CLIP directory has none.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 768)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Target tokens per caption (DeCap: the first 20 CLIP tokens).
    #[arg(long, default_value_t = DECAP_TARGET_TOKENS)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    #[serde(skip)]
    #[arg(skip)]
    pub run: RunOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecapTrainReport {
    pub captions: usize,
    pub skipped: usize,
    pub parameters: usize,
    pub run: RunReport,
    pub weights: PathBuf,
}

pub fn train_decap(opts: &DecapTrainOptions) -> Result<DecapTrainReport> {
    let corpus = read_captions(&opts.captions)?;
    let encoder = TextEncoder::load(&opts.clip, opts.tokenizer.as_deref())?;
    let embeds = text_embeddings(&encoder, &corpus.captions, opts)?;
    let target_rows = target_ids(&corpus.captions, opts.max_tokens, |c| encoder.tokenizer.encode_for_model(c));
    let device = Device::Cpu;
    let cfg = Gpt2Config {
        n_embd: opts.hidden,
        n_layer: opts.layers,
        n_head: opts.heads,
        vocab_size: encoder.tokenizer.vocab_size(),
        n_positions: (crate::export_decap::DECAP_MAX_TOKENS + 1).max(opts.max_tokens + 1),
        layer_norm_epsilon: 1e-5,
    };
    cfg.validate()?;
    let mut params = Params::new(opts.run.seed, device.clone());
    let project = Linear::new(&mut params, "clip_project.model.0", (encoder.embed_dim(), opts.hidden), true, 0.02)?;
    let decoder = Gpt2::new(&mut params, &cfg, "decoder.")?;
    let mut optimizer = AdamW::new(params.trained(), AdamWConfig::new(opts.lr, opts.warmup))?;

    let embeds = Tensor::from_vec(embeds.data, embeds.shape.as_slice(), &device)?;
    let n = corpus.captions.len();
    let t = opts.max_tokens;
    let targets = Tensor::from_vec(target_rows.clone(), (n, t), &device)?;
    let mut schedule = Schedule::new(opts.run.seed, n, opts.batch);
    let settings = serde_json::to_value(opts)?;
    let run = train(&opts.run, "train decap", settings, &params, &mut optimizer, |step| {
        let batch = schedule.batch(step);
        let idx = Tensor::new(batch.iter().map(|&i| i as u32).collect::<Vec<_>>(), &device)?;
        let b = batch.len();
        let prefix = project.forward(&embeds.index_select(&idx, 0)?)?.unsqueeze(1)?;
        let tokens = targets.index_select(&idx, 0)?;
        let inputs = Tensor::cat(&[&prefix, &decoder.embed(&tokens.narrow(1, 0, t - 1)?)?], 1)?;
        let hidden = decoder.hidden(&inputs)?.reshape((b * t, opts.hidden))?;
        // Only positions with a target (id 0 is padding) go through the LM head.
        let (rows, wanted) = target_positions(&batch, &target_rows, t);
        let rows = Tensor::new(rows, &device)?;
        let logits = decoder.logits(&hidden.index_select(&rows, 0)?)?;
        let loss = cross_entropy(&logits, &Tensor::new(wanted, &device)?, None, opts.label_smoothing)?;
        Ok(StepOutput { loss, items: b })
    })?;

    let weights = opts.run.out.join(DECAP_WEIGHTS);
    save_safetensors(&weights, &params.export("", str::to_string)?)?;
    Ok(DecapTrainReport { captions: n, skipped: corpus.skipped, parameters: params.trained_count(), run, weights })
}

/// L2-normalised CLIP text embeddings [N, E] of the captions, cached in the run directory.
fn text_embeddings(encoder: &TextEncoder, captions: &[String], opts: &DecapTrainOptions) -> Result<tensor::Tensor> {
    let joined = captions.join("\n");
    let key = cache::key(&[joined.as_bytes(), &cache::dir_fingerprint(&opts.clip)?]);
    std::fs::create_dir_all(&opts.run.out).with_context(|| format!("{}: cannot create", opts.run.out.display()))?;
    let e = encoder.embed_dim();
    let path = opts.run.out.join("text_embeddings.safetensors");
    let rows = cache::rows(&path, &key, || {
        let chunks: Vec<&[String]> = captions.chunks(256).collect();
        let steps = Steps::new(opts.run.progress, "embedding captions", chunks.len() as u64);
        let mut data = Vec::with_capacity(captions.len() * e);
        for chunk in chunks {
            steps.tick();
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            data.extend(encoder.embed(&refs)?);
        }
        steps.finish();
        tensor::Tensor::new(vec![captions.len(), e], data)
    })?;
    let t = Tensor::from_vec(rows.data, (captions.len(), e), &Device::Cpu)?;
    let normed = l2_normalise(&t)?;
    tensor::Tensor::new(vec![captions.len(), e], normed.flatten_all()?.to_vec1()?)
}

/// Each caption's first `t` model ids (start token first), padded with 0, row-major [N, t].
fn target_ids(captions: &[String], t: usize, encode: impl Fn(&str) -> Vec<u32>) -> Vec<u32> {
    let mut out = vec![0u32; captions.len() * t];
    for (row, caption) in captions.iter().enumerate() {
        for (col, id) in encode(caption).into_iter().take(t).enumerate() {
            out[row * t + col] = id;
        }
    }
    out
}

/// For a batch of captions (rows of `targets` [N, t]): the flat positions b·t + j whose target
/// is not padding, and those targets.
fn target_positions(batch: &[usize], targets: &[u32], t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rows = Vec::new();
    let mut wanted = Vec::new();
    for (b, &item) in batch.iter().enumerate() {
        for (j, &id) in targets[item * t..(item + 1) * t].iter().enumerate() {
            if id != 0 {
                rows.push((b * t + j) as u32);
                wanted.push(id);
            }
        }
    }
    (rows, wanted)
}

pub fn check_options(opts: &DecapTrainOptions) -> Result<()> {
    if opts.max_tokens < 2 {
        bail!("--max-tokens must be at least 2 (the start token and one more)");
    }
    if opts.layers == 0 || opts.hidden == 0 || opts.heads == 0 || !opts.hidden.is_multiple_of(opts.heads) {
        bail!("--hidden {} must be a positive multiple of --heads {} (and --layers positive)", opts.hidden, opts.heads);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_truncated_and_padded_with_zero() {
        let caps = vec!["a".to_string(), "b".to_string()];
        let ids = target_ids(&caps, 3, |c| if c == "a" { vec![9, 5, 6, 7, 8] } else { vec![9, 4] });
        assert_eq!(ids, vec![9, 5, 6, 9, 4, 0]);
        let (rows, wanted) = target_positions(&[1, 0], &ids, 3);
        assert_eq!(rows, vec![0, 1, 3, 4, 5]);
        assert_eq!(wanted, vec![9, 4, 9, 5, 6]);
    }
}
