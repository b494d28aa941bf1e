//! `host-tools train clip`: a small CLIP-style dual encoder trained contrastively on
//! image–caption pairs (the default model's, on synthetic scenes).
//!
//! The recipe is CLIP's: both towers embed a batch, the embeddings are L2-normalised, and a
//! symmetric cross-entropy over the scaled similarity matrix pulls each image to its caption.
//! Synthetic captions repeat, so pairs in a batch that share a caption are all positives (soft
//! targets), rather than negatives the model could never tell apart. The result is an HF CLIP
//! directory: config.json, model.safetensors, preprocessor_config.json and a BPE vocabulary
//! learned from the captions (vocab.json + merges.txt), which export and memory building read.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use edgecap_engine::preprocess::{preprocess, PreprocessConfig};
use edgecap_engine::tokenizer::ClipTokenizer;
use serde::Serialize;

use super::clip::{hf_config_json, logit_scale, ClipText, ClipVision};
use super::data::{read_pairs, Schedule};
use super::layers::{l2_normalise, log_softmax};
use super::optim::{AdamW, AdamWConfig};
use super::params::{save_safetensors, Params};
use super::run::{train, RunOptions, RunReport, StepOutput};
use crate::bpe_train::learn_clip_vocab;
use crate::models::clip_text::ClipTextConfig;
use crate::models::clip_vision::{Activation, ClipVisionConfig};
use crate::progress::Steps;
use crate::rng::Rng;
use crate::text_encoder::load_clip_tokenizer;

/// CLIP caps the logit scale at 100.
const MAX_LOGIT_SCALE: f32 = 4.6052;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct ClipTrainOptions {
    /// image<TAB>caption lines (paths relative to the file) or COCO-style JSON.
    #[arg(long)]
    pub data: PathBuf,
    /// Use this CLIP vocabulary instead of learning one (dir or bpe_simple_vocab file).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    #[arg(long, default_value_t = 8)]
    pub patch_size: usize,
    #[arg(long, default_value_t = 96)]
    pub vision_width: usize,
    #[arg(long, default_value_t = 4)]
    pub vision_layers: usize,
    #[arg(long, default_value_t = 64)]
    pub text_width: usize,
    #[arg(long, default_value_t = 2)]
    pub text_layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 64)]
    pub projection_dim: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Decay the learning rate linearly to zero at --steps. A resume to a larger --steps decays
    /// to the new count: the rate jumps back up (a warm restart; the default model's recipe).
    #[arg(long)]
    pub lr_decay: bool,
    /// Half of each batch: captions one token away from the other half's, or with the same words
    /// swapped between objects (hard negatives).
    #[arg(long)]
    pub hard_negatives: bool,
    /// Weight of a caption-vs-caption contrastive term: distinct captions in a batch must embed
    /// apart. Without it the two towers can settle on ignoring a word neither yet encodes
    /// (measured: "on the left" and "on the right" embedded at cosine 1.000).
    #[arg(long, default_value_t = 0.0)]
    pub text_contrast: f64,
    #[serde(skip)]
    #[arg(skip)]
    pub run: RunOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipTrainReport {
    pub pairs: usize,
    pub skipped_images: usize,
    pub distinct_captions: usize,
    pub vocab_size: usize,
    pub parameters: usize,
    /// Image → caption retrieval among the distinct captions, on up to 500 training images.
    pub retrieval_top1: f32,
    pub run: RunReport,
    pub out: PathBuf,
}

/// Tokenised captions: ids [N, L] padded with the end token, the flat pooled index of each
/// caption's end token, a text id per caption (equal text, equal id) and a group id per caption:
/// captions that state the same scene ("a red circle above a blue square", "a blue square below
/// a red circle") share a group, and are positives of each other rather than negatives no image
/// could tell apart.
struct CaptionTable {
    ids: Vec<u32>,
    len: usize,
    end_index: Vec<usize>,
    text: Vec<usize>,
    group: Vec<usize>,
    distinct: Vec<String>,
}

pub fn train_clip(opts: &ClipTrainOptions) -> Result<ClipTrainReport> {
    let pairs = read_pairs(&opts.data)?;
    let preprocess_cfg = PreprocessConfig {
        image_size: opts.image_size as u32,
        shortest_edge: opts.image_size as u32,
        ..PreprocessConfig::default()
    };
    let (pixels, captions, skipped_images) = load_images(&pairs, &preprocess_cfg, opts.run.progress)?;
    std::fs::create_dir_all(&opts.run.out).with_context(|| format!("{}: cannot create", opts.run.out.display()))?;
    let tokenizer = tokenizer(opts, &captions)?;
    let table = caption_table(&captions, &tokenizer);
    let (vision_cfg, text_cfg) = configs(opts, tokenizer.vocab_size());

    let device = Device::Cpu;
    let mut params = Params::new(opts.run.seed, device.clone());
    let vision = ClipVision::new(&mut params, &vision_cfg)?;
    let text = ClipText::new(&mut params, &text_cfg)?;
    let scale = logit_scale(&mut params)?;
    let mut schedule_cfg = AdamWConfig::new(opts.lr, opts.warmup);
    schedule_cfg.decay_to = opts.lr_decay.then_some(opts.run.steps);
    let mut optimizer = AdamW::new(params.trained(), schedule_cfg)?;

    let n = captions.len();
    let s = opts.image_size;
    let pixels = Tensor::from_vec(pixels, (n, 3, s, s), &device)?;
    let ids = Tensor::from_vec(table.ids.clone(), (n, table.len), &device)?;
    let anchors = if opts.hard_negatives { opts.batch / 2 } else { opts.batch };
    let mut schedule = Schedule::new(opts.run.seed, n, anchors.max(1));
    let neighbours = opts.hard_negatives.then(|| hard_neighbours(&table));
    let run = train(&opts.run, "train clip", serde_json::to_value(opts)?, &params, &mut optimizer, |step| {
        let mut batch = schedule.batch(step);
        if let Some(neighbours) = &neighbours {
            add_hard_negatives(
                &mut batch,
                neighbours,
                &table.group,
                Rng::derive(opts.run.seed ^ HARD_STREAM, step as u64),
            );
        }
        let idx = Tensor::new(batch.iter().map(|&i| i as u32).collect::<Vec<_>>(), &device)?;
        let b = batch.len();
        let pooled: Vec<u32> =
            batch.iter().enumerate().map(|(r, &i)| (r * table.len + table.end_index[i]) as u32).collect();
        let image = l2_normalise(&vision.forward(&pixels.index_select(&idx, 0)?)?)?;
        let caption = l2_normalise(&text.forward(&ids.index_select(&idx, 0)?, &Tensor::new(pooled, &device)?)?)?;
        let targets = soft_targets(&batch, &table.group, &device)?;
        let loss = contrastive_loss(&image, &caption, &scale, &targets, opts.text_contrast)?;
        Ok(StepOutput { loss, items: b })
    })?;

    let retrieval_top1 = retrieval(&vision, &text, &pixels, &table, &device)?;
    save_clip_dir(opts, &params, &vision_cfg, &text_cfg, &tokenizer)?;
    Ok(ClipTrainReport {
        pairs: n,
        skipped_images,
        distinct_captions: table.distinct.len(),
        vocab_size: tokenizer.vocab_size(),
        parameters: params.trained_count(),
        retrieval_top1,
        run,
        out: opts.run.out.clone(),
    })
}

fn configs(opts: &ClipTrainOptions, vocab: usize) -> (ClipVisionConfig, ClipTextConfig) {
    let vision = ClipVisionConfig {
        hidden_size: opts.vision_width,
        intermediate_size: 4 * opts.vision_width,
        num_hidden_layers: opts.vision_layers,
        num_attention_heads: opts.heads,
        image_size: opts.image_size,
        patch_size: opts.patch_size,
        projection_dim: opts.projection_dim,
        layer_norm_eps: 1e-5,
        hidden_act: Activation::QuickGelu,
    };
    let text = ClipTextConfig {
        vocab_size: vocab,
        hidden_size: opts.text_width,
        intermediate_size: 4 * opts.text_width,
        num_hidden_layers: opts.text_layers,
        num_attention_heads: opts.heads,
        max_position_embeddings: edgecap_engine::tokenizer::CLIP_CONTEXT_LENGTH,
        projection_dim: opts.projection_dim,
        layer_norm_eps: 1e-5,
        hidden_act: Activation::QuickGelu,
    };
    (vision, text)
}

pub fn check_options(opts: &ClipTrainOptions) -> Result<()> {
    let (v, t) = configs(opts, 1);
    v.validate().context("image tower")?;
    t.validate().context("text tower")?;
    if opts.vision_layers == 0 || opts.text_layers == 0 {
        bail!("both towers need at least one layer");
    }
    Ok(())
}

/// Preprocessed pixels of every readable image (as the bundle will preprocess them) and the
/// captions that go with them; unreadable images are skipped and counted.
fn load_images(
    pairs: &[(PathBuf, String)],
    cfg: &PreprocessConfig,
    progress: bool,
) -> Result<(Vec<f32>, Vec<String>, usize)> {
    let steps = Steps::new(progress, "reading images", pairs.len() as u64);
    let mut pixels = Vec::with_capacity(pairs.len() * cfg.tensor_len());
    let mut captions = Vec::with_capacity(pairs.len());
    let mut skipped = 0;
    for (path, caption) in pairs {
        steps.tick();
        match edgecap_engine::image_load::load_rgb(path) {
            Ok(rgb) => {
                pixels.extend(preprocess(&rgb, cfg));
                captions.push(caption.clone());
            }
            Err(e) => {
                log::warn!("{}: skipped: {e}", path.display());
                skipped += 1;
            }
        }
    }
    steps.finish();
    if captions.is_empty() {
        bail!("no readable image");
    }
    Ok((pixels, captions, skipped))
}

fn tokenizer(opts: &ClipTrainOptions, captions: &[String]) -> Result<ClipTokenizer> {
    let out = &opts.run.out;
    let (vocab, merges) = (out.join("vocab.json"), out.join("merges.txt"));
    match &opts.tokenizer {
        Some(given) => {
            let (v, m) = crate::text_encoder::clip_tokenizer_files(given, Some(given))?;
            edgecap_engine::fsutil::write_atomic(&vocab, &v)?;
            edgecap_engine::fsutil::write_atomic(&merges, &m)?;
        }
        None => {
            let learned = learn_clip_vocab(captions, 4096, 2)?;
            log::info!("learned a BPE vocabulary of {} merges from the captions", learned.merges);
            edgecap_engine::fsutil::write_atomic(&vocab, &learned.vocab_json)?;
            edgecap_engine::fsutil::write_atomic(&merges, &learned.merges_txt)?;
        }
    }
    load_clip_tokenizer(out, None)
}

fn caption_table(captions: &[String], tokenizer: &ClipTokenizer) -> CaptionTable {
    let encoded: Vec<Vec<u32>> = captions.iter().map(|c| tokenizer.encode_for_model(c)).collect();
    let len = encoded.iter().map(Vec::len).max().unwrap_or(2);
    let end = tokenizer.end_token_id();
    let mut ids = vec![end; captions.len() * len];
    let mut end_index = Vec::with_capacity(captions.len());
    for (row, seq) in encoded.iter().enumerate() {
        ids[row * len..row * len + seq.len()].copy_from_slice(seq);
        end_index.push(seq.len() - 1);
    }
    let text = first_seen_ids(captions.iter().map(String::as_str));
    let keys: Vec<String> = captions.iter().map(|c| meaning_key(c)).collect();
    let group = first_seen_ids(keys.iter().map(String::as_str));
    let mut distinct = Vec::new();
    for (c, &g) in captions.iter().zip(&group) {
        if g == distinct.len() {
            distinct.push(c.clone());
        }
    }
    CaptionTable { ids, len, end_index, text, group, distinct }
}

/// What a caption states: a scene caption's canonical form, any other caption itself.
fn meaning_key(caption: &str) -> String {
    match crate::scenes::parse_caption(caption) {
        Some(description) => description.canonical().caption(),
        None => caption.to_string(),
    }
}

/// 0, 1, 2… in order of first appearance, equal values equal ids.
fn first_seen_ids<'a>(values: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    values
        .map(|v| {
            let next = seen.len();
            *seen.entry(v).or_insert(next)
        })
        .collect()
}

/// Separates the hard-negative draws from the batch schedule's stream.
const HARD_STREAM: u64 = 0x6861_7264;

/// How far one caption's tokens are from another's, for hard negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nearness {
    /// Same length, one token differs: "two red circles on the left" / "… on the right".
    OneToken,
    /// Same length, the same tokens moved between up to [`MAX_SWAPPED`] positions: "a red
    /// circle above a blue square" / "a blue circle above a red square" (colours bound to the
    /// other object), or the two objects changing places.
    Swapped,
}

/// Positions a [`Nearness::Swapped`] pair may differ in (both objects' colour and shape).
const MAX_SWAPPED: usize = 4;

fn nearness(a: &[u32], b: &[u32]) -> Option<Nearness> {
    if a.len() != b.len() {
        return None;
    }
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    match differ.len() {
        1 => Some(Nearness::OneToken),
        2..=MAX_SWAPPED => {
            let mut x: Vec<u32> = differ.iter().map(|&i| a[i]).collect();
            let mut y: Vec<u32> = differ.iter().map(|&i| b[i]).collect();
            x.sort_unstable();
            y.sort_unstable();
            (x == y).then_some(Nearness::Swapped)
        }
        _ => None,
    }
}

/// Hard negatives of one group: the items of other groups whose captions are near one of its
/// captions.
#[derive(Debug, Default, Clone, PartialEq)]
struct Neighbours {
    one_token: Vec<usize>,
    swapped: Vec<usize>,
}

/// For each group, its [`Neighbours`]. A random batch rarely holds such a pair, so without them
/// nothing forces the encoder to see the one attribute that differs (measured: position was
/// decoded no better than chance), or which object an attribute belongs to.
fn hard_neighbours(table: &CaptionTable) -> Vec<Neighbours> {
    let l = table.len;
    let texts = table.text.iter().max().map_or(0, |&t| t + 1);
    let mut members = vec![Vec::new(); texts];
    let mut group_of_text = vec![0; texts];
    for (item, &t) in table.text.iter().enumerate() {
        members[t].push(item);
        group_of_text[t] = table.group[item];
    }
    let tokens: Vec<&[u32]> = members
        .iter()
        .map(|m| {
            let i = m[0];
            &table.ids[i * l..i * l + table.end_index[i] + 1]
        })
        .collect();
    let mut out = vec![Neighbours::default(); table.distinct.len()];
    for t in 0..texts {
        let g = group_of_text[t];
        for u in (0..texts).filter(|&u| group_of_text[u] != g) {
            match nearness(tokens[t], tokens[u]) {
                Some(Nearness::OneToken) => out[g].one_token.extend(&members[u]),
                Some(Nearness::Swapped) => out[g].swapped.extend(&members[u]),
                None => {}
            }
        }
    }
    out
}

/// Share of hard negatives drawn from the swapped neighbours when a caption has both kinds.
const SWAPPED_SHARE: f32 = 0.5;

/// Appends, for each item of `batch`, a random item whose caption is near its caption (a random
/// item when it has none).
fn add_hard_negatives(batch: &mut Vec<usize>, neighbours: &[Neighbours], group: &[usize], mut rng: Rng) {
    let extra: Vec<usize> = batch
        .iter()
        .map(|&i| {
            let n = &neighbours[group[i]];
            let swapped = !n.swapped.is_empty() && (n.one_token.is_empty() || rng.uniform() < SWAPPED_SHARE);
            if swapped {
                *rng.choose(&n.swapped)
            } else if !n.one_token.is_empty() {
                *rng.choose(&n.one_token)
            } else {
                rng.range(0..group.len())
            }
        })
        .collect();
    batch.extend(extra);
}

/// CLIP's symmetric image↔caption loss over L2-normalised embeddings [B, D], plus
/// `text_contrast` × the caption↔caption term (distinct captions apart, equal ones together).
fn contrastive_loss(
    image: &Tensor,
    caption: &Tensor,
    scale: &Tensor,
    targets: &Tensor,
    text_contrast: f64,
) -> Result<Tensor> {
    let scale = scale.clamp(0f32, MAX_LOGIT_SCALE)?.exp()?;
    let logits = image.matmul(&caption.t()?)?.broadcast_mul(&scale)?;
    let loss = ((soft_cross_entropy(&logits, targets)? + soft_cross_entropy(&logits.t()?, &targets.t()?)?)? * 0.5)?;
    if text_contrast == 0.0 {
        return Ok(loss);
    }
    let between = caption.matmul(&caption.t()?)?.broadcast_mul(&scale)?;
    Ok((loss + (soft_cross_entropy(&between, targets)? * text_contrast)?)?)
}

/// [B, B] targets: row i spreads its mass evenly over the batch items with i's caption.
fn soft_targets(batch: &[usize], group: &[usize], device: &Device) -> Result<Tensor> {
    let b = batch.len();
    let mut t = vec![0f32; b * b];
    for i in 0..b {
        let same: Vec<usize> = (0..b).filter(|&j| group[batch[j]] == group[batch[i]]).collect();
        for &j in &same {
            t[i * b + j] = 1.0 / same.len() as f32;
        }
    }
    Ok(Tensor::from_vec(t, (b, b), device)?)
}

fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let b = logits.dim(0)?;
    Ok((log_softmax(logits)? * targets)?.sum_all()?.neg()?.affine(1.0 / b as f64, 0.0)?)
}

/// Top-1 image → caption retrieval among the distinct captions, for up to 500 images.
fn retrieval(
    vision: &ClipVision,
    text: &ClipText,
    pixels: &Tensor,
    table: &CaptionTable,
    device: &Device,
) -> Result<f32> {
    let n = pixels.dim(0)?.min(500);
    // One item per distinct caption stands for it.
    let first: Vec<usize> =
        (0..table.distinct.len()).map(|g| table.group.iter().position(|&x| x == g).unwrap_or(0)).collect();
    let l = table.len;
    let ids: Vec<u32> = first.iter().flat_map(|&i| table.ids[i * l..(i + 1) * l].to_vec()).collect();
    let pooled: Vec<u32> = first.iter().enumerate().map(|(r, &i)| (r * l + table.end_index[i]) as u32).collect();
    let captions =
        l2_normalise(&text.forward(&Tensor::from_vec(ids, (first.len(), l), device)?, &Tensor::new(pooled, device)?)?)?;
    let mut correct = 0;
    for start in (0..n).step_by(100) {
        let m = (n - start).min(100);
        let images = l2_normalise(&vision.forward(&pixels.narrow(0, start, m)?)?)?;
        let best: Vec<u32> = images.matmul(&captions.t()?)?.argmax(D::Minus1)?.to_vec1()?;
        correct += best.iter().enumerate().filter(|(r, &g)| table.group[start + r] == g as usize).count();
    }
    Ok(correct as f32 / n.max(1) as f32)
}

fn save_clip_dir(
    opts: &ClipTrainOptions,
    params: &Params,
    vision: &ClipVisionConfig,
    text: &ClipTextConfig,
    tokenizer: &ClipTokenizer,
) -> Result<()> {
    let out = &opts.run.out;
    save_safetensors(&out.join("model.safetensors"), &params.export("", str::to_string)?)?;
    let config = hf_config_json(vision, text, tokenizer.start_token_id(), tokenizer.end_token_id());
    edgecap_engine::fsutil::write_atomic(&out.join("config.json"), &serde_json::to_vec_pretty(&config)?)?;
    let d = PreprocessConfig::default();
    let preprocessor = serde_json::json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": opts.image_size},
        "do_center_crop": true,
        "crop_size": {"height": opts.image_size, "width": opts.image_size},
        "do_rescale": true,
        "rescale_factor": d.rescale,
        "do_normalize": true,
        "image_mean": d.mean,
        "image_std": d.std,
        "resample": 3,
    });
    edgecap_engine::fsutil::write_atomic(
        &out.join("preprocessor_config.json"),
        &serde_json::to_vec_pretty(&preprocessor)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of token captions; `meaning[i]` is caption i's group (equal text, equal meaning).
    fn table(captions: &[&[u32]], meaning: &[usize]) -> CaptionTable {
        let len = captions.iter().map(|c| c.len()).max().unwrap();
        let mut ids = vec![9; captions.len() * len];
        for (row, c) in captions.iter().enumerate() {
            ids[row * len..row * len + c.len()].copy_from_slice(c);
        }
        let names: Vec<String> = captions.iter().map(|c| format!("{c:?}")).collect();
        let groups = meaning.iter().max().unwrap() + 1;
        CaptionTable {
            ids,
            len,
            end_index: captions.iter().map(|c| c.len() - 1).collect(),
            text: first_seen_ids(names.iter().map(String::as_str)),
            group: meaning.to_vec(),
            distinct: (0..groups).map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn neighbours_differ_in_one_token_or_by_swapped_tokens() {
        // Items 0 and 3 share a caption; 1 differs from it in one token, 2 in two (no swap),
        // 4 is longer, 5 swaps 0's first two tokens, 6 states 0's meaning in other words.
        let captions: &[&[u32]] =
            &[&[1, 2, 3], &[1, 5, 3], &[6, 5, 3], &[1, 2, 3], &[1, 2, 3, 4], &[2, 1, 3], &[2, 1, 7]];
        let t = table(captions, &[0, 1, 2, 0, 3, 4, 0]);
        let n = hard_neighbours(&t);
        assert_eq!(n[0].one_token, vec![1, 5], "1 is near [1,2,3]; 5 is one token from [2,1,7]");
        assert_eq!(n[0].swapped, vec![5], "[2,1,3] swaps [1,2,3]'s first two tokens");
        assert_eq!(n[1], Neighbours { one_token: vec![0, 3, 2], swapped: vec![] }, "by text, then by item");
        assert_eq!(n[2].one_token, vec![1]);
        assert!(n[2].swapped.is_empty(), "[6,5,3] and [1,2,3] differ in two positions, not by a swap");
        assert_eq!(n[3], Neighbours::default());
        assert_eq!(n[4].one_token, vec![6], "one token from [2,1,7], another text of group 0");
        assert!(!n[4].one_token.contains(&5));
        assert_eq!(nearness(&[1, 2, 3, 4, 5], &[3, 4, 1, 2, 5]), Some(Nearness::Swapped), "objects trade places");
        assert_eq!(nearness(&[1, 2, 3, 4, 5], &[2, 3, 4, 5, 1]), None, "five positions is not a swap");
        let mut batch = vec![1, 4];
        add_hard_negatives(&mut batch, &n, &t.group, Rng::new(1));
        assert_eq!(batch.len(), 4);
        assert!([0, 3, 2].contains(&batch[2]), "one of item 1's neighbours");
        assert!(batch[3] < 7, "item 4 has none: any item");
    }

    #[test]
    fn captions_of_one_scene_share_a_group() {
        let captions: Vec<String> = [
            "a red circle above a blue square",
            "a blue square below a red circle",
            "a red circle below a blue square",
            "hello there",
            "hello there",
        ]
        .map(String::from)
        .to_vec();
        let keys: Vec<String> = captions.iter().map(|c| meaning_key(c)).collect();
        assert_eq!(keys[0], keys[1]);
        assert_ne!(keys[0], keys[2]);
        assert_eq!(keys[3], "hello there");
        assert_eq!(first_seen_ids(keys.iter().map(String::as_str)), vec![0, 0, 1, 2, 2]);
    }

    #[test]
    fn text_contrast_charges_distinct_captions_that_embed_alike() {
        let d = Device::Cpu;
        let t = |rows: Vec<Vec<f32>>| Tensor::new(rows, &d).unwrap();
        let scale = Tensor::new(MAX_LOGIT_SCALE, &d).unwrap();
        let targets = soft_targets(&[0, 1], &[0, 1], &d).unwrap();
        let loss = |caption: &Tensor, weight| {
            let image = t(vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
            contrastive_loss(&image, caption, &scale, &targets, weight).unwrap().to_scalar::<f32>().unwrap()
        };
        let apart = t(vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        let alike = t(vec![vec![1.0, 0.0], vec![1.0, 0.0]]);
        // Apart, at scale 100, every term is ~0; two captions embedded alike cost ln 2 per row in
        // the caption↔caption term, which the plain loss does not add.
        assert!(loss(&apart, 1.0) < 1e-6);
        let extra = loss(&alike, 2.0) - loss(&alike, 0.0);
        assert!((extra - 2.0 * std::f32::consts::LN_2).abs() < 1e-4, "{extra}");
    }

    #[test]
    fn soft_targets_share_mass_between_equal_captions() {
        let t = soft_targets(&[0, 1, 2], &[0, 1, 0], &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = t.to_vec2().unwrap();
        assert_eq!(rows, vec![vec![0.5, 0.0, 0.5], vec![0.0, 1.0, 0.0], vec![0.5, 0.0, 0.5]]);
    }
}
