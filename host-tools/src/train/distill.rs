//! `host-tools distill`: a smaller GPT-2 for the device, distilled from a larger one on caption
//! text (as distilgpt2 was from gpt2).
//!
//! The student keeps the teacher's width and takes its embeddings, final norm, LM head and every
//! other block (teacher block i·L/N for student block i), then learns to match the teacher's
//! next-token distribution: KL(teacher ‖ student) at temperature T, scaled by T², on every
//! caption position. The result is an HF GPT-2 directory (config.json + model.safetensors + the
//! teacher's tokenizer files) that `host-tools export --lm` and `train clipcap --lm` take.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use super::clipcap::load_gpt2_tokenizer;
use super::data::{read_captions, Schedule};
use super::gpt2::{hf_config_json, Gpt2};
use super::layers::{cross_entropy, log_softmax, softmax};
use super::optim::{AdamW, AdamWConfig};
use super::params::{save_safetensors, Params};
use super::run::{train, RunOptions, RunReport, StepOutput};
use crate::checkpoint;
use crate::export::{normalise_gpt2_names, read_json};
use crate::models::gpt2::Gpt2Config;
use crate::tensor::TensorMap;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct DistillOptions {
    /// HF GPT-2 directory of the teacher.
    #[arg(long)]
    pub teacher: PathBuf,
    /// Student layers (initialised from every other teacher layer).
    #[arg(long)]
    pub layers: usize,
    /// Captions: one per line, image<TAB>caption lines, or COCO-style JSON.
    #[arg(long)]
    pub data: PathBuf,
    /// GPT-2 tokenizer directory when the teacher's has none.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 40)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    #[serde(skip)]
    #[arg(skip)]
    pub run: RunOptions,
}

/// Quality and speed of one model on the held-out captions.
#[derive(Debug, Clone, Serialize)]
pub struct ModelScore {
    pub layers: usize,
    /// Mean next-token cross-entropy on the held-out captions, and its perplexity.
    pub cross_entropy: f32,
    pub perplexity: f32,
    /// Forward passes over the held-out batch: tokens per second (median of 3).
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistillReport {
    pub captions: usize,
    pub held_out: usize,
    pub skipped: usize,
    pub teacher: ModelScore,
    pub student: ModelScore,
    /// How often the student's most likely next token is the teacher's, on held-out positions.
    pub top1_agreement: f32,
    pub run: RunReport,
    pub out: PathBuf,
}

pub fn distill(opts: &DistillOptions) -> Result<DistillReport> {
    let shown = opts.teacher.display().to_string();
    let cfg = Gpt2Config::from_hf_config(&read_json(&opts.teacher.join("config.json"))?)
        .with_context(|| format!("{shown}: unusable GPT-2 config"))?;
    if opts.layers == 0 || opts.layers >= cfg.n_layer {
        bail!("--layers must be between 1 and the teacher's {} - 1, got {}", cfg.n_layer, opts.layers);
    }
    let tokenizer_dir = opts.tokenizer.clone().unwrap_or_else(|| opts.teacher.clone());
    let tokenizer = load_gpt2_tokenizer(&tokenizer_dir)?;
    let corpus = read_captions(&opts.data)?;
    let t = opts.max_tokens.min(cfg.n_positions);
    let (tokens, skipped) = token_rows(&corpus.captions, t, cfg.vocab_size, |c| tokenizer.encode(c));
    let rows = tokens.len() / t;
    if rows < 2 {
        bail!("{}: fewer than 2 usable captions", opts.data.display());
    }
    // A tenth (at least one caption) is held out to compare teacher and student.
    let held_out = (rows / 10).max(1);
    let train_rows = rows - held_out;

    let device = Device::Cpu;
    let teacher_weights = normalise_gpt2_names(checkpoint::read_hf_dir(&opts.teacher)?)?;
    let mut teacher_params = Params::new(opts.run.seed, device.clone()).with_weights(hf_names(&teacher_weights));
    teacher_params.set_trainable(false);
    let teacher = Gpt2::new(&mut teacher_params, &cfg, "")?;
    let student_cfg = Gpt2Config { n_layer: opts.layers, ..cfg.clone() };
    let mut params =
        Params::new(opts.run.seed, device.clone()).with_weights(student_init(&teacher_weights, &cfg, opts.layers));
    let student = Gpt2::new(&mut params, &student_cfg, "")?;
    let mut optimizer = AdamW::new(params.trained(), AdamWConfig::new(opts.lr, opts.warmup))?;

    let all = Tensor::from_vec(tokens, (rows, t), &device)?;
    let (train_tokens, eval_tokens) = (all.narrow(0, 0, train_rows)?, all.narrow(0, train_rows, held_out)?);
    let mut schedule = Schedule::new(opts.run.seed, train_rows, opts.batch);
    let temp = opts.temperature;
    let run = train(&opts.run, "distill", serde_json::to_value(opts)?, &params, &mut optimizer, |step| {
        let idx = Tensor::new(schedule.batch(step).iter().map(|&i| i as u32).collect::<Vec<_>>(), &device)?;
        let batch = train_tokens.index_select(&idx, 0)?;
        let mask = batch.ne(0u32)?.to_dtype(DType::F32)?;
        let teacher_p = softmax(&(teacher.forward_embeds(&teacher.embed(&batch)?)?.detach() / temp)?)?;
        let student_logp = log_softmax(&(student.forward_embeds(&student.embed(&batch)?)? / temp)?)?;
        let kl_per_position = (teacher_p.clone() * ((teacher_p + 1e-12)?.log()? - student_logp)?)?.sum(D::Minus1)?;
        let positions = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        let loss = ((kl_per_position * mask)?.sum_all()? * (temp * temp / f64::from(positions)))?;
        Ok(StepOutput { loss, items: positions as usize })
    })?;

    std::fs::create_dir_all(&opts.run.out)?;
    save_student(opts, &params, &student_cfg, &tokenizer_dir, tokenizer.eos_token_id())?;
    let teacher_score = score(&teacher, &eval_tokens, cfg.n_layer)?;
    let student_score = score(&student, &eval_tokens, opts.layers)?;
    let top1_agreement = agreement(&teacher, &student, &eval_tokens)?;
    Ok(DistillReport {
        captions: rows,
        held_out,
        skipped: skipped + corpus.skipped,
        teacher: teacher_score,
        student: student_score,
        top1_agreement,
        run,
        out: opts.run.out.clone(),
    })
}

/// HF names (`transformer.*`, `lm_head.weight`) of normalised GPT-2 weights.
fn hf_names(w: &TensorMap) -> TensorMap {
    w.iter()
        .map(|(k, t)| (if k == "lm_head.weight" { k.to_string() } else { format!("transformer.{k}") }, t.clone()))
        .collect()
}

/// The student's starting weights: the teacher's, with block i taken from teacher block i·L/N.
fn student_init(teacher: &TensorMap, cfg: &Gpt2Config, layers: usize) -> TensorMap {
    let mut out = TensorMap::new();
    for (name, t) in hf_names(teacher).iter() {
        let Some(rest) = name.strip_prefix("transformer.h.") else {
            out.insert(name, t.clone());
            continue;
        };
        let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let Ok(index) = index.parse::<usize>() else { continue };
        for student in 0..layers {
            if student * cfg.n_layer / layers == index {
                out.insert(format!("transformer.h.{student}.{tail}"), t.clone());
            }
        }
    }
    out
}

fn save_student(
    opts: &DistillOptions,
    params: &Params,
    cfg: &Gpt2Config,
    tokenizer_dir: &std::path::Path,
    eos: Option<u32>,
) -> Result<()> {
    let out = &opts.run.out;
    save_safetensors(&out.join("model.safetensors"), &params.export("", str::to_string)?)?;
    let config = serde_json::to_vec_pretty(&hf_config_json(cfg, eos))?;
    edgecap_engine::fsutil::write_atomic(&out.join("config.json"), &config)?;
    for name in ["vocab.json", "merges.txt", "tokenizer.json"] {
        let src = tokenizer_dir.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).with_context(|| format!("{}: cannot read", src.display()))?;
            edgecap_engine::fsutil::write_atomic(&out.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// Each caption's first `t` ids, 0-padded, for captions of at least 2 ids inside the vocabulary;
/// returns the rows and how many captions were skipped.
fn token_rows(captions: &[String], t: usize, vocab: usize, encode: impl Fn(&str) -> Vec<u32>) -> (Vec<u32>, usize) {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for caption in captions {
        let ids = encode(caption);
        if ids.len() < 2 || ids.iter().any(|&id| id as usize >= vocab) {
            skipped += 1;
            continue;
        }
        let mut row = vec![0u32; t];
        for (slot, id) in row.iter_mut().zip(ids) {
            *slot = id;
        }
        rows.extend(row);
    }
    (rows, skipped)
}

fn score(model: &Gpt2, tokens: &Tensor, layers: usize) -> Result<ModelScore> {
    let (b, t) = tokens.dims2()?;
    let v = model.config.vocab_size;
    let mut times = Vec::new();
    let mut logits = None;
    for _ in 0..3 {
        let started = Instant::now();
        logits = Some(model.forward_embeds(&model.embed(tokens)?)?);
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let logits = logits.context("no forward pass")?;
    let inputs = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let targets = tokens.narrow(1, 1, t - 1)?.flatten_all()?;
    let ce = cross_entropy(&inputs, &targets, Some(0), 0.0)?.to_scalar::<f32>()?;
    Ok(ModelScore {
        layers,
        cross_entropy: ce,
        perplexity: ce.exp(),
        tokens_per_second: (b * t) as f64 / times[1].max(1e-9),
    })
}

fn agreement(teacher: &Gpt2, student: &Gpt2, tokens: &Tensor) -> Result<f32> {
    let top = |m: &Gpt2| -> Result<Tensor> { Ok(m.forward_embeds(&m.embed(tokens)?)?.argmax(D::Minus1)?) };
    let same = top(teacher)?.eq(&top(student)?)?.to_dtype(DType::F32)?;
    let mask = tokens.ne(0u32)?.to_dtype(DType::F32)?;
    let agree = (same * &mask)?.sum_all()?.to_scalar::<f32>()?;
    Ok(agree / mask.sum_all()?.to_scalar::<f32>()?.max(1.0))
}
