//! `host-tools bench`: how fast a bundle loads and captions on this machine. A benchmark, not a
//! test: it reports medians and 90th percentiles of repeated runs and asserts nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edgecap_engine::model::CaptionModel;
use edgecap_engine::pipeline::StageTimings;
use serde::Serialize;

use crate::images;
use crate::validate::{median, percentile};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub bundle: PathBuf,
    pub images: PathBuf,
    /// Timed captions per image (after one warm-up caption of the first image).
    pub runs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median_ms: f64,
    pub p90_ms: f64,
}

impl Stat {
    fn of(samples: &[Duration]) -> Stat {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Stat { median_ms: median(&ms), p90_ms: percentile(&ms, 90.0) }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    pub precision: String,
    pub load_ms: f64,
    pub captions: usize,
    pub preprocess: Stat,
    pub image_encoder: Stat,
    pub mapper: Stat,
    pub decoder: Stat,
    pub total: Stat,
    /// Generated tokens per second of decoder time.
    pub tokens_per_s: f64,
    /// Peak resident memory of this process (VmHWM), when the OS reports it.
    pub peak_rss_mib: Option<f64>,
}

pub fn bench(opts: &BenchOptions) -> Result<BenchReport> {
    let samples = images::load_dir(&opts.images)?;
    let started = Instant::now();
    let model =
        CaptionModel::load(&opts.bundle).with_context(|| format!("cannot load bundle {}", opts.bundle.display()))?;
    let load = started.elapsed();
    let gen = model.default_options();
    model.caption(&samples[0].image, &gen).context("warm-up caption")?;
    let (mut timings, mut tokens) = (Vec::<StageTimings>::new(), 0usize);
    for _ in 0..opts.runs.max(1) {
        for s in &samples {
            let c = model.caption(&s.image, &gen).with_context(|| format!("{}: cannot caption", s.path.display()))?;
            tokens += c.tokens.len();
            timings.push(c.timings);
        }
    }
    let stat = |f: fn(&StageTimings) -> Duration| Stat::of(&timings.iter().map(f).collect::<Vec<_>>());
    let decoder_s: f64 = timings.iter().map(|t| t.decoder.as_secs_f64()).sum();
    Ok(BenchReport {
        bundle: opts.bundle.display().to_string(),
        precision: format!("{:?}", model.manifest.precision).to_lowercase(),
        load_ms: load.as_secs_f64() * 1e3,
        captions: timings.len(),
        preprocess: stat(|t| t.preprocess),
        image_encoder: stat(|t| t.image_encoder),
        mapper: stat(|t| t.mapper),
        decoder: stat(|t| t.decoder),
        total: stat(|t| t.total()),
        tokens_per_s: if decoder_s > 0.0 { tokens as f64 / decoder_s } else { 0.0 },
        peak_rss_mib: peak_rss_kib(Path::new("/proc/self/status")).map(|k| k as f64 / 1024.0),
    })
}

/// `VmHWM` (kB) from a `/proc/<pid>/status` file.
fn peak_rss_kib(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn render(r: &BenchReport) -> String {
    let mut out = format!(
        "bench: {} ({}), load {:.0} ms, {} captions\n{:<16} {:>10} {:>10}\n",
        r.bundle, r.precision, r.load_ms, r.captions, "stage", "median ms", "p90 ms"
    );
    for (name, s) in [
        ("preprocess", &r.preprocess),
        ("image encoder", &r.image_encoder),
        ("mapper", &r.mapper),
        ("decoder", &r.decoder),
        ("total", &r.total),
    ] {
        out.push_str(&format!("{name:<16} {:>10.2} {:>10.2}\n", s.median_ms, s.p90_ms));
    }
    out.push_str(&format!("decoder tokens/s {:>10.1}\n", r.tokens_per_s));
    match r.peak_rss_mib {
        Some(m) => out.push_str(&format!("peak RSS         {m:>10.1} MiB\n")),
        None => out.push_str("peak RSS         unknown (no /proc/self/status)\n"),
    }
    out
}
