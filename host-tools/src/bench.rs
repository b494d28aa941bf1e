//! `host-tools bench`: how fast a bundle loads and captions on this machine. A benchmark, not a
//! test: it reports medians and 90th percentiles of repeated runs and asserts nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::platform::process_memory_mib;
use edgecap_engine::StageTimings;
use serde::Serialize;

use crate::images;
use crate::validate::{median, percentile};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub bundle: PathBuf,
    /// Photographs to caption; none = the built-in ones.
    pub images: Option<PathBuf>,
    /// Timed captions per image (after one warm-up caption of the first image).
    pub runs: usize,
    /// Threads the matrix products use (set by the caller; recorded in the report).
    pub threads: usize,
    /// Exactly this many tokens per caption, greedy, no stop token: every caption (and every
    /// runtime compared with it) does the same work. `None`: the bundle's own decoding.
    pub tokens: Option<usize>,
    /// Keep every caption's timings in the report.
    pub samples: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median_ms: f64,
    pub p90_ms: f64,
}

impl Stat {
    /// Median and 90th percentile of one field over the timed captions.
    fn of(samples: &[Sample], field: fn(&Sample) -> f64) -> Stat {
        let ms: Vec<f64> = samples.iter().map(field).collect();
        Stat { median_ms: median(&ms), p90_ms: percentile(&ms, 90.0) }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    pub precision: String,
    pub threads: usize,
    pub load_ms: f64,
    pub captions: usize,
    pub preprocess: Stat,
    pub image_encoder: Stat,
    pub mapper: Stat,
    pub decoder: Stat,
    /// Prefix fed through the decoder and the first token chosen.
    pub first_token: Stat,
    /// Mean time of each later token, per caption.
    pub next_token: Stat,
    pub total: Stat,
    /// Generated tokens per second of decoder time.
    pub tokens_per_s: f64,
    /// Peak resident memory of this process (VmHWM), when the OS reports it.
    pub peak_rss_mib: Option<f64>,
    /// Resident memory once the bundle is loaded, before the first caption (VmRSS).
    pub loaded_rss_mib: Option<f64>,
    /// Every timed caption, with `--samples`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

/// One timed caption.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub image: String,
    pub tokens: usize,
    pub preprocess_ms: f64,
    pub image_encoder_ms: f64,
    pub mapper_ms: f64,
    pub first_token_ms: f64,
    pub next_token_ms: f64,
    pub decoder_ms: f64,
    pub total_ms: f64,
}

impl Sample {
    fn new(image: &Path, tokens: usize, t: &StageTimings) -> Sample {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Sample {
            image: image.display().to_string(),
            tokens,
            preprocess_ms: ms(t.preprocess),
            image_encoder_ms: ms(t.image_encoder),
            mapper_ms: ms(t.mapper),
            first_token_ms: ms(t.first_token),
            next_token_ms: next_token_ms(t, tokens),
            decoder_ms: ms(t.decoder),
            total_ms: ms(t.total()),
        }
    }
}

/// Mean time of the tokens after the first (0 for a one-token caption).
fn next_token_ms(t: &StageTimings, tokens: usize) -> f64 {
    match tokens {
        0 | 1 => 0.0,
        n => (t.decoder.saturating_sub(t.first_token)).as_secs_f64() * 1e3 / (n - 1) as f64,
    }
}

pub fn bench(opts: &BenchOptions) -> Result<BenchReport> {
    let samples = images::load_dir_or_builtin(opts.images.as_deref())?;
    let started = Instant::now();
    let model =
        CaptionModel::load(&opts.bundle).with_context(|| format!("cannot load bundle {}", opts.bundle.display()))?;
    let load = started.elapsed();
    let loaded_rss_mib = process_memory_mib("VmRSS");
    let mut gen = model.default_options();
    if let Some(n) = opts.tokens {
        gen = GenerationOptions { max_tokens: n, beam_width: 1, stop_token_ids: Vec::new(), ..gen };
    }
    model.check_options(&gen)?;
    model.caption(&samples[0].image, &gen).context("warm-up caption")?;
    let mut timed = Vec::<Sample>::new();
    for _ in 0..opts.runs.max(1) {
        for s in &samples {
            let c = model.caption(&s.image, &gen).with_context(|| format!("{}: cannot caption", s.path.display()))?;
            timed.push(Sample::new(&s.path, c.tokens.len(), &c.timings));
        }
    }
    let tokens: usize = timed.iter().map(|s| s.tokens).sum();
    let stat = |field| Stat::of(&timed, field);
    let decoder_s: f64 = timed.iter().map(|s| s.decoder_ms).sum::<f64>() / 1e3;
    Ok(BenchReport {
        bundle: opts.bundle.display().to_string(),
        precision: format!("{:?}", model.manifest.precision).to_lowercase(),
        threads: opts.threads,
        load_ms: load.as_secs_f64() * 1e3,
        captions: timed.len(),
        preprocess: stat(|s| s.preprocess_ms),
        image_encoder: stat(|s| s.image_encoder_ms),
        mapper: stat(|s| s.mapper_ms),
        decoder: stat(|s| s.decoder_ms),
        first_token: stat(|s| s.first_token_ms),
        next_token: stat(|s| s.next_token_ms),
        total: stat(|s| s.total_ms),
        tokens_per_s: if decoder_s > 0.0 { tokens as f64 / decoder_s } else { 0.0 },
        peak_rss_mib: process_memory_mib("VmHWM"),
        loaded_rss_mib,
        samples: if opts.samples { timed } else { Vec::new() },
    })
}

pub fn render(r: &BenchReport) -> String {
    let mut out = format!(
        "bench: {} ({}), {} threads, load {:.0} ms, {} captions\n{:<16} {:>10} {:>10}\n",
        r.bundle, r.precision, r.threads, r.load_ms, r.captions, "stage", "median ms", "p90 ms"
    );
    for (name, s) in [
        ("preprocess", &r.preprocess),
        ("image encoder", &r.image_encoder),
        ("mapper", &r.mapper),
        ("decoder", &r.decoder),
        ("  first token", &r.first_token),
        ("  next token", &r.next_token),
        ("total", &r.total),
    ] {
        out.push_str(&format!("{name:<16} {:>10.2} {:>10.2}\n", s.median_ms, s.p90_ms));
    }
    out.push_str(&format!("decoder tokens/s {:>10.1}\n", r.tokens_per_s));
    for (name, value) in [("RSS after load", r.loaded_rss_mib), ("peak RSS", r.peak_rss_mib)] {
        match value {
            Some(m) => out.push_str(&format!("{name:<16} {m:>10.1} MiB\n")),
            None => out.push_str(&format!("{name:<16} unknown (no /proc/self/status)\n")),
        }
    }
    out
}
