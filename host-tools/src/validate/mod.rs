//! `host-tools validate`: what quantization cost, stage by stage, on real photographs.
//!
//! Both bundles caption every image end to end (each with its own embeddings and prefix, as on
//! the device). Compared: the image embeddings (cosine, SQNR), the prefixes (SQNR), the decoder
//! under teacher forcing on the fp32 caption (each model fed its own prefix, then the same fp32
//! tokens; KL(fp32 ‖ int8) and same-top-token rate at every position), the captions themselves
//! (exact match and, with references, BLEU/ROUGE-L/CIDEr-D), the logits' SQNR at every decoding
//! step, every quantized linear layer's SQNR ([`layers`]), sizes and stage latencies.

pub mod layers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::Bundle;
use edgecap_engine::manifest::Precision;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::session::DecoderState;
use serde::Serialize;

use crate::images::{self, Sample};
use crate::metrics::{self, tokenize::normalize, Scores};
use crate::references::{self, References};

/// SQNR reported when the two tensors are identical (the ratio is infinite).
pub const SQNR_CAP_DB: f64 = 300.0;

#[derive(Debug, Clone)]
pub struct Thresholds {
    pub min_embedding_cosine: f64,
    pub min_token_agreement: f64,
    /// Largest allowed CIDEr-D drop (fp32 − int8), checked only with references.
    pub max_cider_drop: Option<f64>,
    /// Smallest allowed mean logits SQNR over every teacher-forced position, in dB.
    pub min_logits_sqnr_db: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_embedding_cosine: 0.99,
            min_token_agreement: 0.9,
            max_cider_drop: None,
            min_logits_sqnr_db: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub fp32: PathBuf,
    pub int8: PathBuf,
    pub images: PathBuf,
    pub references: Option<PathBuf>,
    pub thresholds: Thresholds,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Summary {
        let n = values.len().max(1) as f64;
        Summary {
            mean: values.iter().sum::<f64>() / n,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub image: String,
    pub fp32_caption: String,
    pub int8_caption: String,
    pub embedding_cosine: f64,
    pub embedding_sqnr_db: f64,
    pub prefix_sqnr_db: f64,
    pub kl_mean: f64,
    pub top_token_agreement: f64,
    /// The logits' SQNR at each teacher-forced step (dB).
    pub logits_sqnr_db: Vec<f64>,
    /// The same with the int8 decoder fed the fp32 prefix (the decoder's own share).
    pub decoder_logits_sqnr_db: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecoderStats {
    pub positions: usize,
    pub kl_mean: f64,
    pub kl_max: f64,
    /// Fraction of positions where both models' most likely next token is the same.
    pub top_token_agreement: f64,
    /// Logits SQNR over every position (dB): meaningful on any model, where the top-token
    /// agreement is not on flat next-token distributions.
    pub logits_sqnr_db: Summary,
    /// Mean over the images of the first step's logits SQNR (the prefix alone).
    pub logits_sqnr_step0_db: f64,
    /// Mean logits SQNR at each step, over the images whose caption reaches it.
    pub logits_sqnr_by_step_db: Vec<f64>,
    /// The int8 decoder fed the fp32 prefix (its own share of the error): logits SQNR over every
    /// position, and the mean over images at step 0.
    pub decoder_logits_sqnr_db: Summary,
    pub decoder_logits_sqnr_step0_db: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReferenceStats {
    pub images: usize,
    pub fp32: Scores,
    pub int8: Scores,
    pub cider_drop: f64,
    pub bleu4_drop: f64,
    pub meteor: &'static str,
}

/// Median milliseconds per stage.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub preprocess_ms: f64,
    pub image_encoder_ms: f64,
    pub mapper_ms: f64,
    pub decoder_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub value: f64,
    pub threshold: f64,
    /// `>=` or `<=`
    pub op: &'static str,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub fp32_bundle: String,
    pub int8_bundle: String,
    pub images: usize,
    pub embedding_cosine: Summary,
    pub embedding_sqnr_db: Summary,
    pub prefix_sqnr_db: Summary,
    pub decoder: DecoderStats,
    pub caption_exact_match: f64,
    pub references: Option<ReferenceStats>,
    pub fp32_bytes: u64,
    pub int8_bytes: u64,
    pub fp32_latency: Latency,
    pub int8_latency: Latency,
    /// Every quantized linear layer, worst isolated SQNR first.
    pub layers: Vec<layers::LayerSqnr>,
    pub checks: Vec<Check>,
    pub pass: bool,
    pub per_image: Vec<ImageResult>,
}

pub fn validate(opts: &ValidateOptions) -> Result<Report> {
    let load = |p: &Path| CaptionModel::load(p).with_context(|| format!("cannot load bundle {}", p.display()));
    let (fp32, int8) = (load(&opts.fp32)?, load(&opts.int8)?);
    check_compatible(&fp32, &int8, opts)?;
    let open = |p: &Path| Bundle::open(p).with_context(|| format!("cannot open bundle {}", p.display()));
    let (fp32_bundle, int8_bundle) = (open(&opts.fp32)?, open(&opts.int8)?);
    let refs = opts.references.as_deref().map(references::read).transpose()?;
    let samples = images::load_dir(&opts.images)?;

    let mut per_image = Vec::new();
    let (mut kls, mut agree, mut positions) = (Vec::new(), 0usize, 0usize);
    let (mut t32, mut t8) = (Vec::new(), Vec::new());
    for s in &samples {
        let r = compare_image(&fp32, &int8, s).with_context(|| format!("{}: cannot caption", s.path.display()))?;
        positions += r.kl.len();
        agree += r.agree;
        kls.extend_from_slice(&r.kl);
        t32.push(r.timings.0);
        t8.push(r.timings.1);
        per_image.push(r.result);
    }
    let col = |f: fn(&ImageResult) -> f64| per_image.iter().map(f).collect::<Vec<f64>>();
    let exact = per_image.iter().filter(|r| r.fp32_caption == r.int8_caption).count();
    let steps = per_image.iter().map(|r| r.logits_sqnr_db.len()).max().unwrap_or(0);
    let by_step = (0..steps)
        .map(|i| {
            Summary::of(&per_image.iter().filter_map(|r| r.logits_sqnr_db.get(i).copied()).collect::<Vec<_>>()).mean
        })
        .collect();
    let all_sqnr: Vec<f64> = per_image.iter().flat_map(|r| r.logits_sqnr_db.iter().copied()).collect();
    let decoder = DecoderStats {
        positions,
        kl_mean: Summary::of(&kls).mean,
        kl_max: Summary::of(&kls).max,
        top_token_agreement: agree as f64 / positions.max(1) as f64,
        logits_sqnr_db: Summary::of(&all_sqnr),
        logits_sqnr_step0_db: Summary::of(
            &per_image.iter().filter_map(|r| r.logits_sqnr_db.first().copied()).collect::<Vec<_>>(),
        )
        .mean,
        logits_sqnr_by_step_db: by_step,
        decoder_logits_sqnr_db: Summary::of(
            &per_image.iter().flat_map(|r| r.decoder_logits_sqnr_db.iter().copied()).collect::<Vec<_>>(),
        ),
        decoder_logits_sqnr_step0_db: Summary::of(
            &per_image.iter().filter_map(|r| r.decoder_logits_sqnr_db.first().copied()).collect::<Vec<_>>(),
        )
        .mean,
    };
    let references = refs.as_ref().map(|r| reference_stats(r, &samples, &per_image)).transpose()?;
    let embedding_cosine = Summary::of(&col(|r| r.embedding_cosine));
    let checks = checks(&opts.thresholds, &embedding_cosine, &decoder, references.as_ref());
    let layers = layers::layer_sqnr(&fp32, &samples, (&fp32_bundle, &int8_bundle)).context("per-layer SQNR")?;
    Ok(Report {
        fp32_bundle: opts.fp32.display().to_string(),
        int8_bundle: opts.int8.display().to_string(),
        images: samples.len(),
        embedding_cosine,
        embedding_sqnr_db: Summary::of(&col(|r| r.embedding_sqnr_db)),
        prefix_sqnr_db: Summary::of(&col(|r| r.prefix_sqnr_db)),
        decoder,
        caption_exact_match: exact as f64 / samples.len() as f64,
        references,
        fp32_bytes: fp32.manifest.files.iter().map(|f| f.bytes).sum(),
        int8_bytes: int8.manifest.files.iter().map(|f| f.bytes).sum(),
        fp32_latency: latency(&t32),
        int8_latency: latency(&t8),
        layers,
        pass: checks.iter().all(|c| c.pass),
        checks,
        per_image,
    })
}

/// The int8 bundle must be the same model as the fp32 one, or nothing compares; and the two the
/// wrong way round would print a report with every column under the other's name.
fn check_compatible(fp32: &CaptionModel, int8: &CaptionModel, opts: &ValidateOptions) -> Result<()> {
    let int8_path = &opts.int8;
    if fp32.manifest.precision == Precision::Int8 && int8.manifest.precision == Precision::Fp32 {
        bail!(
            "{}: an int8 bundle where the fp32 reference goes, and {} is fp32: give the fp32 bundle first",
            opts.fp32.display(),
            int8_path.display()
        );
    }
    if fp32.manifest.architecture != int8.manifest.architecture {
        bail!(
            "{}: not a quantization of the fp32 bundle (architecture {} vs {})",
            int8_path.display(),
            int8.manifest.architecture.name(),
            fp32.manifest.architecture.name()
        );
    }
    if fp32.manifest.model != int8.manifest.model {
        bail!(
            "{}: not a quantization of the fp32 bundle (model sizes differ: {:?} vs {:?})",
            int8_path.display(),
            int8.manifest.model,
            fp32.manifest.model
        );
    }
    if fp32.manifest.preprocess != int8.manifest.preprocess {
        bail!("{}: not a quantization of the fp32 bundle (preprocessing differs)", int8_path.display());
    }
    same_token_table(fp32, int8)
        .map_err(|detail| anyhow::anyhow!("{}: not a quantization of the fp32 bundle ({detail})", int8_path.display()))
}

/// Quantization keeps the token table (in f16, a relative error under 2^-11): rows spread over
/// the vocabulary that differ beyond that mean two models of the same shape but other weights,
/// which would run to a meaningless FAIL instead.
fn same_token_table(fp32: &CaptionModel, int8: &CaptionModel) -> Result<(), String> {
    const ROWS: usize = 16;
    let vocab = fp32.dims().vocab_size;
    for id in (0..ROWS).map(|i| (i * vocab / ROWS) as u32) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        fp32.push_token_embedding(id, &mut a).map_err(|e| e.to_string())?;
        int8.push_token_embedding(id, &mut b).map_err(|e| e.to_string())?;
        if a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3 * x.abs() + 1e-4) {
            return Err(format!("the token embeddings of token {id} differ"));
        }
    }
    Ok(())
}

struct ImageComparison {
    result: ImageResult,
    kl: Vec<f64>,
    agree: usize,
    timings: (edgecap_engine::StageTimings, edgecap_engine::StageTimings),
}

fn compare_image(fp32: &CaptionModel, int8: &CaptionModel, s: &Sample) -> Result<ImageComparison> {
    let opts = fp32.default_options();
    let a = fp32.trace(&s.image, &opts)?;
    let b = int8.trace(&s.image, &opts)?;
    let forced = teacher_forced(fp32, int8, (&a.prefix, &b.prefix), &a.caption.tokens)?;
    let (kl, agree) = (forced.kl, forced.agree);
    let result = ImageResult {
        image: images::file_name(&s.path),
        fp32_caption: a.caption.text.clone(),
        int8_caption: b.caption.text.clone(),
        embedding_cosine: cosine(&a.image_embeds, &b.image_embeds),
        embedding_sqnr_db: sqnr_db(&a.image_embeds, &b.image_embeds),
        prefix_sqnr_db: sqnr_db(&a.prefix, &b.prefix),
        kl_mean: Summary::of(&kl).mean,
        top_token_agreement: agree as f64 / kl.len().max(1) as f64,
        logits_sqnr_db: forced.sqnr,
        decoder_logits_sqnr_db: forced.decoder_sqnr,
    };
    Ok(ImageComparison { result, kl, agree, timings: (a.caption.timings, b.caption.timings) })
}

/// What teacher forcing measured at every position of one caption.
struct Forced {
    kl: Vec<f64>,
    agree: usize,
    /// Logits SQNR, each model fed its own prefix.
    sqnr: Vec<f64>,
    /// Logits SQNR, the int8 decoder fed the fp32 prefix: the decoder's own share.
    decoder_sqnr: Vec<f64>,
}

/// Feeds each model its own prefix, then the fp32 caption's tokens; at every position returns
/// KL(fp32 ‖ int8) of the next-token distributions, how often the argmaxes agree, and the
/// logits' SQNR; and the logits' SQNR of the int8 decoder fed the fp32 prefix.
fn teacher_forced(
    fp32: &CaptionModel,
    int8: &CaptionModel,
    (prefix32, prefix8): (&[f32], &[f32]),
    tokens: &[u32],
) -> Result<Forced> {
    let p = fp32.dims().prefix_length;
    let (mut s32, mut s8, mut d8) =
        (DecoderState::new(fp32, 1)?, DecoderState::new(int8, 1)?, DecoderState::new(int8, 1)?);
    let (mut l32, mut l8) = (s32.feed_embeddings(prefix32, p)?, s8.feed_embeddings(prefix8, p)?);
    let mut ld = d8.feed_embeddings(prefix32, p)?;
    let n = tokens.len();
    let mut f = Forced { kl: Vec::with_capacity(n), agree: 0, sqnr: Vec::with_capacity(n), decoder_sqnr: Vec::new() };
    for (i, &t) in tokens.iter().enumerate() {
        f.kl.push(kl_divergence(&l32, &l8));
        f.sqnr.push(sqnr_db(&l32, &l8));
        f.decoder_sqnr.push(sqnr_db(&l32, &ld));
        f.agree += usize::from(argmax(&l32) == argmax(&l8));
        if i + 1 < n {
            l32 = s32.feed_tokens(&[t])?;
            l8 = s8.feed_tokens(&[t])?;
            ld = d8.feed_tokens(&[t])?;
        }
    }
    Ok(f)
}

fn reference_stats(refs: &References, samples: &[Sample], results: &[ImageResult]) -> Result<ReferenceStats> {
    let (mut c32, mut c8, mut rs) = (Vec::new(), Vec::new(), Vec::new());
    for (s, r) in samples.iter().zip(results) {
        if let Some(found) = references::lookup(refs, &s.path) {
            c32.push(normalize(&r.fp32_caption));
            c8.push(normalize(&r.int8_caption));
            rs.push(found.iter().map(|c| normalize(c)).collect::<Vec<_>>());
        } else {
            log::warn!("{}: no reference captions, left out of BLEU/ROUGE/CIDEr", s.path.display());
        }
    }
    if rs.is_empty() {
        bail!("no image in the image directory has a reference caption");
    }
    let (fp32, int8) = (metrics::score(&c32, &rs), metrics::score(&c8, &rs));
    Ok(ReferenceStats {
        images: rs.len(),
        cider_drop: fp32.cider - int8.cider,
        bleu4_drop: fp32.bleu[3] - int8.bleu[3],
        fp32,
        int8,
        meteor: "not computed (pycocoevalcap's METEOR needs Java)",
    })
}

fn checks(t: &Thresholds, cosine: &Summary, decoder: &DecoderStats, refs: Option<&ReferenceStats>) -> Vec<Check> {
    let at_least = |name, value: f64, threshold| Check { name, value, threshold, op: ">=", pass: value >= threshold };
    let mut checks = vec![
        at_least("embedding cosine (mean)", cosine.mean, t.min_embedding_cosine),
        at_least("same top token", decoder.top_token_agreement, t.min_token_agreement),
    ];
    if let Some(min) = t.min_logits_sqnr_db {
        checks.push(at_least("logits SQNR (mean, dB)", decoder.logits_sqnr_db.mean, min));
    }
    if let (Some(max), Some(r)) = (t.max_cider_drop, refs) {
        checks.push(Check {
            name: "CIDEr drop",
            value: r.cider_drop,
            threshold: max,
            op: "<=",
            pass: r.cider_drop <= max,
        });
    }
    checks
}

fn latency(timings: &[edgecap_engine::StageTimings]) -> Latency {
    let med = |f: fn(&edgecap_engine::StageTimings) -> Duration| {
        median(&timings.iter().map(|t| f(t).as_secs_f64() * 1e3).collect::<Vec<_>>())
    };
    Latency {
        preprocess_ms: med(|t| t.preprocess),
        image_encoder_ms: med(|t| t.image_encoder),
        mapper_ms: med(|t| t.mapper),
        decoder_ms: med(|t| t.decoder),
        total_ms: med(|t| t.total()),
    }
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Nearest-rank percentile (0 for no values).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}

/// 20·log10(‖x‖ / ‖x − y‖), capped at [`SQNR_CAP_DB`] for identical tensors.
pub fn sqnr_db(x: &[f32], y: &[f32]) -> f64 {
    let noise: f64 = x.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt();
    if noise == 0.0 {
        return SQNR_CAP_DB;
    }
    (20.0 * (norm(x) / noise).log10()).min(SQNR_CAP_DB)
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// KL(p ‖ q) of the softmax distributions of two logit vectors, in nats.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Steps of the logits SQNR shown in the table (all in `--json`).
const LOGITS_STEPS_SHOWN: usize = 12;
/// Layers shown in the table, worst first (all in `--json`).
const LAYERS_SHOWN: usize = 20;

/// The readable table.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("validate: {} (int8) vs {} (fp32), {} images", r.int8_bundle, r.fp32_bundle, r.images));
    line(format!("{:<34} {:>12} {:>12}", "stage / metric", "mean", "min"));
    line(format!(
        "{:<34} {:>12.6} {:>12.6}",
        "image embedding cosine", r.embedding_cosine.mean, r.embedding_cosine.min
    ));
    line(format!(
        "{:<34} {:>12.2} {:>12.2}",
        "image embedding SQNR (dB)", r.embedding_sqnr_db.mean, r.embedding_sqnr_db.min
    ));
    line(format!("{:<34} {:>12.2} {:>12.2}", "prefix SQNR (dB)", r.prefix_sqnr_db.mean, r.prefix_sqnr_db.min));
    line(format!(
        "{:<34} {:>12.6} {:>12}",
        "decoder KL(fp32‖int8) (nats)",
        r.decoder.kl_mean,
        format!("max {:.4}", r.decoder.kl_max)
    ));
    line(format!(
        "{:<34} {:>11.1}% {:>12}",
        "decoder same top token",
        100.0 * r.decoder.top_token_agreement,
        format!("{} pos", r.decoder.positions)
    ));
    line(format!(
        "{:<34} {:>12.2} {:>12.2}",
        "decoder logits SQNR (dB)", r.decoder.logits_sqnr_db.mean, r.decoder.logits_sqnr_db.min
    ));
    line(format!("{:<34} {:>12.2}", "decoder logits SQNR step 0 (dB)", r.decoder.logits_sqnr_step0_db));
    line(format!(
        "{:<34} {:>12.2} {:>12}",
        "  same, fp32 prefix to both (dB)",
        r.decoder.decoder_logits_sqnr_db.mean,
        format!("step 0 {:.2}", r.decoder.decoder_logits_sqnr_step0_db)
    ));
    line(format!("{:<34} {:>11.1}%", "caption exact match", 100.0 * r.caption_exact_match));
    if let Some(refs) = &r.references {
        line(format!("references ({} images)            {:>12} {:>12} {:>10}", refs.images, "fp32", "int8", "drop"));
        for k in 0..4 {
            let (a, b) = (refs.fp32.bleu[k], refs.int8.bleu[k]);
            line(format!("{:<34} {:>12.4} {:>12.4} {:>10.4}", format!("BLEU-{}", k + 1), a, b, shown_drop(a - b)));
        }
        let (a, b) = (refs.fp32.rouge_l, refs.int8.rouge_l);
        line(format!("{:<34} {:>12.4} {:>12.4} {:>10.4}", "ROUGE-L", a, b, shown_drop(a - b)));
        line(format!(
            "{:<34} {:>12.4} {:>12.4} {:>10.4}",
            "CIDEr-D",
            refs.fp32.cider,
            refs.int8.cider,
            shown_drop(refs.cider_drop)
        ));
        line(format!("{:<34} {}", "METEOR", refs.meteor));
    }
    let by_step = &r.decoder.logits_sqnr_by_step_db;
    let shown: Vec<String> = by_step.iter().take(LOGITS_STEPS_SHOWN).map(|v| format!("{v:.1}")).collect();
    let more = if by_step.len() > LOGITS_STEPS_SHOWN { " …" } else { "" };
    line(format!("logits SQNR by step (dB, from step 0): {}{more}", shown.join(" ")));
    if !r.layers.is_empty() {
        let shown = r.layers.len().min(LAYERS_SHOWN);
        line(format!(
            "linear layers, worst first ({shown} of {}; SQNR dB of the product's output, fp32 vs int8 on the same inputs)",
            r.layers.len()
        ));
        line(format!("  {:<20} {:<52} {:>9} {:>11}", "graph", "layer", "isolated", "in pipeline"));
        for l in &r.layers[..shown] {
            line(format!("  {:<20} {:<52} {:>9.2} {:>11.2}", l.graph, l.layer, l.isolated_db, l.pipeline_db));
        }
    }
    line(format!("{:<34} {:>12} {:>12}", "", "fp32", "int8"));
    line(format!("{:<34} {:>12.1} {:>12.1}", "bundle size (MiB)", mib(r.fp32_bytes), mib(r.int8_bytes)));
    let lat = [
        ("median image encoder (ms)", r.fp32_latency.image_encoder_ms, r.int8_latency.image_encoder_ms),
        ("median mapper (ms)", r.fp32_latency.mapper_ms, r.int8_latency.mapper_ms),
        ("median decoder (ms)", r.fp32_latency.decoder_ms, r.int8_latency.decoder_ms),
        ("median caption total (ms)", r.fp32_latency.total_ms, r.int8_latency.total_ms),
    ];
    for (name, a, b) in lat {
        line(format!("{name:<34} {a:>12.2} {b:>12.2}"));
    }
    for c in &r.checks {
        line(format!(
            "check {:<28} {:>12.4} {} {:<8} {}",
            c.name,
            c.value,
            c.op,
            c.threshold,
            if c.pass { "ok" } else { "FAIL" }
        ));
    }
    line(format!("verdict: {}", if r.pass { "PASS" } else { "FAIL" }));
    out
}

/// A drop for the table: differences below the printed precision show as 0, not -0.0000.
fn shown_drop(d: f64) -> f64 {
    if d.abs() < 5e-5 {
        0.0
    } else {
        d
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_sqnr_of_known_values() {
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        // p = (1/2, 1/2), q = (e/(1+e), 1/(1+e)) → KL = ln(1/2 / q0)/2 + ln(1/2 / q1)/2
        let (q0, q1) = (1f64.exp() / (1.0 + 1f64.exp()), 1.0 / (1.0 + 1f64.exp()));
        let want = 0.5 * (0.5 / q0).ln() + 0.5 * (0.5 / q1).ln();
        assert!((kl_divergence(&[0.0, 0.0], &[1.0, 0.0]) - want).abs() < 1e-12);
        assert!((sqnr_db(&[3.0, 4.0], &[3.0, 4.5]) - 20.0 * (5.0f64 / 0.5).log10()).abs() < 1e-12);
        assert_eq!(sqnr_db(&[1.0], &[1.0]), SQNR_CAP_DB);
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90.0), 9.0);
    }
}
