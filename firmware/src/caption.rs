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
use edgecap_engine::platform;

use crate::exit;

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

/// How to run the model, from the command line or the service's configuration.
#[derive(Args, Debug, Default, Clone)]
pub struct Decoding {
    /// Most tokens per caption (default: the bundle's).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Beam width; 1 = greedy (default: the bundle's).
    #[arg(long)]
    pub beam: Option<usize>,
    /// Threads for the matrix products (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: &CaptionArgs) -> u8 {
    let (model, opts) = match load_model(args.bundle.as_ref(), &args.decoding) {
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

/// Loads the bundle (the default one when `bundle` is `None`) with the decoding options the
/// command line / configuration override, and sets the thread count. Shared by `caption` and
/// the service.
pub fn load_model(bundle: Option<&PathBuf>, decoding: &Decoding) -> Result<(CaptionModel, GenerationOptions)> {
    let threads = platform::thread_count(decoding.threads).map_err(|e| anyhow::anyhow!("invalid option: {e}"))?;
    platform::set_threads(threads);
    log::info!("{threads} threads for the matrix products");
    let bundle = match bundle {
        Some(b) => b.clone(),
        None => default_bundle()?,
    };
    let model = CaptionModel::load(&bundle).with_context(|| format!("cannot load bundle {}", bundle.display()))?;
    let mut opts = model.default_options();
    if let Some(n) = decoding.max_tokens {
        opts.max_tokens = n;
    }
    if let Some(b) = decoding.beam {
        opts.beam_width = b;
    }
    model.check_options(&opts)?;
    Ok((model, opts))
}

/// The model used when no `--bundle` is given: `$EDGECAP_BUNDLE`, else next to the installed
/// binary (`<prefix>/share/edgecap/default`), in the source tree the binary was built in
/// (`target/<profile>/edgecap` → `models/default`), else the default model built into the
/// binary. Never from the working directory: a folder one happens to run in must not choose the
/// model.
pub fn default_bundle() -> Result<PathBuf> {
    if let Some(env) = std::env::var_os("EDGECAP_BUNDLE") {
        return Ok(PathBuf::from(env));
    }
    let mut candidates = Vec::new();
    if let Some(bin_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)) {
        candidates.push(bin_dir.join("../share/edgecap/default"));
        candidates.push(bin_dir.join("../../models/default"));
    }
    match candidates.into_iter().find(|c| c.join("bundle.toml").is_file()) {
        Some(dir) => Ok(dir),
        None => crate::builtin::bundle_dir(),
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
