//! `edgecap caption`: a batch of image files → captions; a bad image is reported and skipped.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::image_load::load_rgb;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::pipeline::Caption;

use crate::exit;

#[derive(Args, Debug)]
pub struct CaptionArgs {
    /// Model bundle directory (bundle.toml + files).
    #[arg(long)]
    bundle: PathBuf,
    /// Most tokens per caption (default: the bundle's).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Beam width; 1 = greedy (default: the bundle's).
    #[arg(long)]
    beam: Option<usize>,
    /// One JSON object per line: image, caption, tokens, latency_ms (or image, error).
    #[arg(long)]
    json: bool,
    /// Image files (JPEG, PNG, GIF, WebP, BMP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(args: &CaptionArgs) -> u8 {
    let (model, opts) = match load(args) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            return exit::FATAL;
        }
    };
    let mut failed = 0usize;
    let stdout = std::io::stdout();
    for image in &args.images {
        let started = Instant::now();
        let result = load_rgb(image).map_err(Into::into).and_then(|rgb| model.caption(&rgb, &opts));
        let line = match result {
            Ok(caption) => success_line(args, image, &caption, started),
            Err(e) => {
                failed += 1;
                let message = e.to_string();
                eprintln!("error: {message}");
                if !e.is_per_input() {
                    // Not the image's fault: every later image would fail the same way.
                    return exit::FATAL;
                }
                if !args.json {
                    continue;
                }
                serde_json::json!({ "image": image.display().to_string(), "error": message }).to_string()
            }
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return exit::FATAL; // stdout closed: nobody is reading.
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} images failed", args.images.len());
        exit::SOME_FAILED
    } else {
        exit::OK
    }
}

fn load(args: &CaptionArgs) -> Result<(CaptionModel, GenerationOptions)> {
    let model =
        CaptionModel::load(&args.bundle).with_context(|| format!("cannot load bundle {}", args.bundle.display()))?;
    let mut opts = model.default_options();
    if let Some(n) = args.max_tokens {
        opts.max_tokens = n;
    }
    if let Some(b) = args.beam {
        opts.beam_width = b;
    }
    model.check_options(&opts)?;
    Ok((model, opts))
}

fn success_line(args: &CaptionArgs, image: &std::path::Path, caption: &Caption, started: Instant) -> String {
    if args.json {
        serde_json::json!({
            "image": image.display().to_string(),
            "caption": caption.text,
            "tokens": caption.tokens,
            "latency_ms": started.elapsed().as_secs_f64() * 1e3,
        })
        .to_string()
    } else {
        format!("{}: {}", image.display(), caption.text)
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
