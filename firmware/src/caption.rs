//! `edgecap caption`: a batch of image files → captions; a bad image is reported and skipped.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use edgecap_engine::image_load::load_rgb;
use edgecap_engine::Caption;

use crate::exit;
use crate::model::{self, Decoding, Loaded};

#[derive(Args, Debug)]
pub struct CaptionArgs {
    /// Model bundle directory (bundle.toml + files); default: the built-in model (see below).
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[command(flatten)]
    decoding: Decoding,
    /// One JSON object per line: image, caption, tokens, latency_ms (or image, error).
    #[arg(long)]
    json: bool,
    /// Image files (JPEG, PNG, GIF, WebP, BMP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(args: &CaptionArgs) -> u8 {
    let Loaded { model, opts, .. } = match model::load(args.bundle.as_deref(), &args.decoding) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {}", edgecap_engine::error::one_line(e.as_ref()));
            return exit::FATAL;
        }
    };
    let mut failed = 0usize;
    let stdout = std::io::stdout();
    for image in &args.images {
        let started = Instant::now();
        edgecap_engine::stage::edgecap_stage_image_decode();
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
