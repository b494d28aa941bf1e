//! `host-tools train clipcap`: ClipCap's mapping network (Mokady et al. 2021), optionally with
//! GPT-2 tuned too.
//!
//! Every image is embedded once by the CLIP vision tower (cached in the run directory); the
//! mapper turns an embedding into `prefix_length` GPT-2 input embeddings, and the loss is
//! cross-entropy on the caption tokens read after the prefix (ids 0 ignored, as the reference's
//! padding). Captions get a final '.' when they lack one: the exported bundle stops at '.'.
//! The checkpoint holds the reference's names (`clip_project.*`, and `gpt.*` when tuned), so
//! `host-tools export --clipcap` reads it as it reads a released one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use edgecap_engine::tokenizer::Gpt2Tokenizer;
use serde::Serialize;

use super::cache;
use super::data::{read_pairs, Schedule};
use super::gpt2::Gpt2;
use super::layers::{attention, cross_entropy, merge_heads, split_heads, LayerNorm, Linear};
use super::optim::{AdamW, AdamWConfig};
use super::params::{save_safetensors, Init, Params};
use super::run::{train, RunOptions, RunReport, StepOutput};
use crate::checkpoint;
use crate::export::{normalise_gpt2_names, read_json};
use crate::image_encoder::ImageEncoder;
use crate::models::gpt2::Gpt2Config;
use crate::models::mapper::CLIPCAP_HEADS;
use crate::progress::Steps;
use crate::tensor::{self as host, TensorMap};

pub const CLIPCAP_WEIGHTS: &str = "clipcap.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MapperArg {
    Mlp,
    Transformer,
}

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct ClipcapTrainOptions {
    /// HF CLIP directory: embeds the images (once; cached in --out).
    #[arg(long)]
    pub clip: PathBuf,
    /// HF GPT-2 directory (config.json + weights).
    #[arg(long)]
    pub lm: PathBuf,
    /// image<TAB>caption lines (paths relative to the file) or COCO-style JSON.
    #[arg(long)]
    pub data: PathBuf,
    /// GPT-2 vocab.json + merges.txt (or tokenizer.json) directory, when --lm has none.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = MapperArg::Mlp)]
    pub mapper: MapperArg,
    #[arg(long, default_value_t = 10)]
    pub prefix_length: usize,
    /// Transformer mapper layers.
    #[arg(long, default_value_t = 8)]
    pub mapper_layers: usize,
    /// Train GPT-2 too (ClipCap's "GPT-2 tuned" variant); otherwise it stays frozen.
    #[arg(long)]
    pub tune_lm: bool,
    /// Caption tokens per example (longer captions are cut).
    #[arg(long, default_value_t = 40)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 40)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    #[serde(skip)]
    #[arg(skip)]
    pub run: RunOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipcapTrainReport {
    pub pairs: usize,
    /// Images that could not be read, and captions with tokens outside the LM's vocabulary.
    pub skipped_images: usize,
    pub skipped_captions: usize,
    pub parameters: usize,
    pub run: RunReport,
    pub weights: PathBuf,
}

/// ClipCap's two mapping networks, named as `clip_project.*` in its checkpoints.
enum Mapper {
    Mlp { l0: Linear, l2: Linear },
    Transformer { linear: Linear, prefix_const: Tensor, layers: Vec<MapperLayer>, clip_length: usize },
}

/// ClipCap's pre-LN transformer layer: bias-free queries and keys/values, ReLU MLP of width 2D.
struct MapperLayer {
    norm1: LayerNorm,
    to_queries: Linear,
    to_keys_values: Linear,
    project: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl MapperLayer {
    fn new(p: &mut Params, name: &str, d: usize) -> Result<MapperLayer> {
        let lin = |p: &mut Params, n: &str, dims, bias| Linear::new(p, &format!("{name}.{n}"), dims, bias, 0.02);
        Ok(MapperLayer {
            norm1: LayerNorm::new(p, &format!("{name}.norm1"), d, 1e-5)?,
            to_queries: lin(p, "attn.to_queries", (d, d), false)?,
            to_keys_values: lin(p, "attn.to_keys_values", (d, 2 * d), false)?,
            project: lin(p, "attn.project", (d, d), true)?,
            norm2: LayerNorm::new(p, &format!("{name}.norm2"), d, 1e-5)?,
            fc1: lin(p, "mlp.fc1", (d, 2 * d), true)?,
            fc2: lin(p, "mlp.fc2", (2 * d, d), true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let h = self.norm1.forward(x)?;
        let q = split_heads(&self.to_queries.forward(&h)?, CLIPCAP_HEADS)?;
        let kv = self.to_keys_values.forward(&h)?;
        let k = split_heads(&kv.narrow(D::Minus1, 0, d)?, CLIPCAP_HEADS)?;
        let v = split_heads(&kv.narrow(D::Minus1, d, d)?, CLIPCAP_HEADS)?;
        let x = (x + self.project.forward(&merge_heads(&attention(&q, &k, &v, None)?)?)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.relu()?;
        Ok((&x + self.fc2.forward(&h)?)?)
    }
}

impl Mapper {
    fn new(p: &mut Params, opts: &ClipcapTrainOptions, embed: usize, d: usize) -> Result<Mapper> {
        let k = opts.prefix_length;
        Ok(match opts.mapper {
            MapperArg::Mlp => Mapper::Mlp {
                l0: Linear::new(p, "clip_project.model.0", (embed, d * k / 2), true, 0.02)?,
                l2: Linear::new(p, "clip_project.model.2", (d * k / 2, d * k), true, 0.02)?,
            },
            MapperArg::Transformer => Mapper::Transformer {
                linear: Linear::new(p, "clip_project.linear", (embed, k * d), true, 0.02)?,
                prefix_const: p.get("clip_project.prefix_const", &[k, d], Init::Normal(1.0))?,
                layers: (0..opts.mapper_layers)
                    .map(|i| MapperLayer::new(p, &format!("clip_project.transformer.layers.{i}"), d))
                    .collect::<Result<_>>()?,
                clip_length: k,
            },
        })
    }

    /// Prefix embeddings [B, K, D] of image embeddings [B, E].
    fn forward(&self, x: &Tensor, k: usize, d: usize) -> Result<Tensor> {
        let b = x.dim(0)?;
        match self {
            Mapper::Mlp { l0, l2 } => Ok(l2.forward(&l0.forward(x)?.tanh()?)?.reshape((b, k, d))?),
            Mapper::Transformer { linear, prefix_const, layers, clip_length } => {
                let clip = linear.forward(x)?.reshape((b, *clip_length, d))?;
                let constant = prefix_const.unsqueeze(0)?.broadcast_as((b, k, d))?;
                let mut h = Tensor::cat(&[&clip, &constant], 1)?;
                for layer in layers {
                    h = layer.forward(&h)?;
                }
                Ok(h.narrow(1, *clip_length, k)?)
            }
        }
    }
}

pub fn train_clipcap(opts: &ClipcapTrainOptions) -> Result<ClipcapTrainReport> {
    if opts.prefix_length == 0 || opts.max_tokens < 2 {
        bail!("--prefix-length must be positive and --max-tokens at least 2");
    }
    let pairs = read_pairs(&opts.data)?;
    let lm_cfg = Gpt2Config::from_hf_config(&read_json(&opts.lm.join("config.json"))?)
        .with_context(|| format!("{}: unusable GPT-2 config", opts.lm.join("config.json").display()))?;
    if opts.mapper == MapperArg::Transformer && lm_cfg.n_embd % CLIPCAP_HEADS != 0 {
        bail!("the transformer mapper needs a GPT-2 width divisible by {CLIPCAP_HEADS}, got {}", lm_cfg.n_embd);
    }
    let tokenizer = load_gpt2_tokenizer(opts.tokenizer.as_deref().unwrap_or(&opts.lm))?;
    std::fs::create_dir_all(&opts.run.out).with_context(|| format!("{}: cannot create", opts.run.out.display()))?;
    let images = distinct_images(&pairs);
    let (embeds, usable) = image_embeddings(&pairs, &images, opts)?;
    let (tokens, kept) = caption_tokens(&pairs, &images, &usable, &tokenizer, lm_cfg.vocab_size, opts.max_tokens);
    if kept.is_empty() {
        bail!("{}: no usable image–caption pair", opts.data.display());
    }
    let skipped_images = usable.iter().filter(|u| !**u).count();
    let skipped_captions = usable.iter().filter(|u| **u).count() - kept.len();

    let device = Device::Cpu;
    let lm_weights = gpt_names(normalise_gpt2_names(checkpoint::read_hf_dir(&opts.lm)?)?);
    let mut params = Params::new(opts.run.seed, device.clone()).with_weights(lm_weights);
    let (k, d, t) = (opts.prefix_length, lm_cfg.n_embd, opts.max_tokens);
    let mapper = Mapper::new(&mut params, opts, embeds.shape[1], d)?;
    params.set_trainable(opts.tune_lm);
    let gpt = Gpt2::new(&mut params, &lm_cfg, "gpt.")?;
    if let Some(extra) = params.unused().first() {
        bail!("{}: unexpected GPT-2 weight `{extra}` for a {}-layer model", opts.lm.display(), lm_cfg.n_layer);
    }
    if k + t - 1 > lm_cfg.n_positions {
        bail!("prefix {k} + {t} tokens exceed the LM's {} positions", lm_cfg.n_positions);
    }
    let mut optimizer = AdamW::new(params.trained(), AdamWConfig::new(opts.lr, opts.warmup))?;
    let embeds = Tensor::from_vec(embeds.data, embeds.shape.as_slice(), &device)?;
    let image_of = Tensor::new(kept.iter().map(|&(image, _)| image as u32).collect::<Vec<_>>(), &device)?;
    let tokens = Tensor::from_vec(tokens, (kept.len(), t), &device)?;
    let mut schedule = Schedule::new(opts.run.seed, kept.len(), opts.batch);
    let run = train(&opts.run, "train clipcap", serde_json::to_value(opts)?, &params, &mut optimizer, |step| {
        let idx = Tensor::new(schedule.batch(step).iter().map(|&i| i as u32).collect::<Vec<_>>(), &device)?;
        let b = idx.dim(0)?;
        let prefix = mapper.forward(&embeds.index_select(&image_of.index_select(&idx, 0)?, 0)?, k, d)?;
        let target = tokens.index_select(&idx, 0)?;
        let inputs = Tensor::cat(&[&prefix, &gpt.embed(&target.narrow(1, 0, t - 1)?)?], 1)?;
        let logits = gpt.forward_embeds(&inputs)?.narrow(1, k - 1, t)?.reshape((b * t, lm_cfg.vocab_size))?;
        let loss = cross_entropy(&logits, &target.flatten_all()?, Some(0), 0.0)?;
        Ok(StepOutput { loss, items: b })
    })?;

    let weights = opts.run.out.join(CLIPCAP_WEIGHTS);
    let prefix = if opts.tune_lm { "" } else { "clip_project." };
    save_safetensors(&weights, &params.export(prefix, str::to_string)?)?;
    Ok(ClipcapTrainReport {
        pairs: kept.len(),
        skipped_images,
        skipped_captions,
        parameters: params.trained_count(),
        run,
        weights,
    })
}

/// The LM's weights under ClipCap's names: `gpt.transformer.*`, `gpt.lm_head.weight`.
fn gpt_names(lm: TensorMap) -> TensorMap {
    lm.iter()
        .map(|(name, t)| {
            let full = if name == "lm_head.weight" { format!("gpt.{name}") } else { format!("gpt.transformer.{name}") };
            (full, t.clone())
        })
        .collect()
}

/// CLIP embeddings [images, E] of `images` (the pairs' distinct images, sorted), and for each
/// pair whether its image could be read.
fn image_embeddings(
    pairs: &[(PathBuf, String)],
    images: &[PathBuf],
    opts: &ClipcapTrainOptions,
) -> Result<(host::Tensor, Vec<bool>)> {
    let listing: String = images.iter().map(|p| format!("{}\n", p.display())).collect();
    let key = cache::key(&[listing.as_bytes(), &cache::dir_fingerprint(&opts.clip)?]);
    let path = opts.run.out.join("image_embeddings.safetensors");
    let rows = cache::rows(&path, &key, || {
        let encoder = ImageEncoder::load(&opts.clip)?;
        let e = encoder.embed_dim();
        let steps = Steps::new(opts.run.progress, "embedding images", images.len() as u64);
        // One extra column flags unreadable images, so the cache remembers them too.
        let mut data = Vec::with_capacity(images.len() * (e + 1));
        for image in images {
            steps.tick();
            match edgecap_engine::image_load::load_rgb(image) {
                Ok(rgb) => {
                    data.extend(encoder.embed(&rgb)?);
                    data.push(1.0);
                }
                Err(err) => {
                    log::warn!("{}: skipped: {err}", image.display());
                    data.extend(std::iter::repeat_n(0.0, e + 1));
                }
            }
        }
        steps.finish();
        host::Tensor::new(vec![images.len(), e + 1], data)
    })?;
    let width = rows.shape[1];
    let e = width - 1;
    let usable_image: Vec<bool> = rows.data.chunks(width).map(|r| r[e] > 0.5).collect();
    let data: Vec<f32> = rows.data.chunks(width).flat_map(|r| r[..e].to_vec()).collect();
    let index_of = |p: &Path| images.binary_search_by(|x| x.as_path().cmp(p)).unwrap_or(0);
    let usable = pairs.iter().map(|(p, _)| usable_image[index_of(p)]).collect();
    Ok((host::Tensor::new(vec![images.len(), e], data)?, usable))
}

fn distinct_images(pairs: &[(PathBuf, String)]) -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = pairs.iter().map(|(p, _)| p.clone()).collect();
    images.sort();
    images.dedup();
    images
}

/// Token ids [kept, t] (0-padded) of the usable pairs' captions, and for each kept caption its
/// (image index, pair index). Captions with ids the LM cannot embed are skipped with a warning.
fn caption_tokens(
    pairs: &[(PathBuf, String)],
    images: &[PathBuf],
    usable: &[bool],
    tokenizer: &Gpt2Tokenizer,
    vocab: usize,
    t: usize,
) -> (Vec<u32>, Vec<(usize, usize)>) {
    let mut tokens = Vec::new();
    let mut kept = Vec::new();
    for (i, (image, caption)) in pairs.iter().enumerate() {
        if !usable[i] {
            continue;
        }
        let text = if caption.trim_end().ends_with('.') { caption.clone() } else { format!("{}.", caption.trim_end()) };
        let ids = tokenizer.encode(&text);
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            log::warn!(
                "{}: caption {caption:?} has token {bad}, outside the LM's {vocab} ids: skipped",
                image.display()
            );
            continue;
        }
        let mut row = vec![0u32; t];
        for (slot, id) in row.iter_mut().zip(ids) {
            *slot = id;
        }
        tokens.extend(row);
        kept.push((images.binary_search(image).unwrap_or(0), i));
    }
    (tokens, kept)
}

/// A GPT-2 tokenizer from `vocab.json` + `merges.txt`, or `tokenizer.json`, in `dir`.
pub fn load_gpt2_tokenizer(dir: &Path) -> Result<Gpt2Tokenizer> {
    let (vocab, merges, tj) = (dir.join("vocab.json"), dir.join("merges.txt"), dir.join("tokenizer.json"));
    if vocab.is_file() && merges.is_file() {
        return Ok(Gpt2Tokenizer::from_files(&vocab, &merges)?);
    }
    if tj.is_file() {
        return Ok(Gpt2Tokenizer::from_tokenizer_json(&tj)?);
    }
    bail!("{}: no GPT-2 tokenizer (vocab.json + merges.txt or tokenizer.json); pass --tokenizer DIR", dir.display())
}
