//! The model a command runs: the bundle resolved (the default one unless named), loaded, with
//! the decoding options the command line or configuration override. `caption`, `run` and
//! `serve` share it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::platform;

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

/// A loaded model, the options it runs with, and the bundle it came from.
pub struct Loaded {
    pub model: CaptionModel,
    pub opts: GenerationOptions,
    /// The bundle directory used: the one named, or the default one resolved.
    pub bundle: PathBuf,
}

impl Loaded {
    /// The model's name in records and API answers: the bundle's directory name.
    pub fn name(&self) -> String {
        Loaded::name_of(&self.bundle)
    }

    /// [`Loaded::name`] of a bundle directory.
    pub fn name_of(bundle: &Path) -> String {
        let dir = bundle.canonicalize().unwrap_or_else(|_| bundle.to_path_buf());
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "default".into())
    }
}

/// Loads the bundle (the default one when `bundle` is `None`) with the decoding options
/// `decoding` overrides, and sets the thread count.
pub fn load(bundle: Option<&Path>, decoding: &Decoding) -> Result<Loaded> {
    let threads = platform::thread_count(decoding.threads).map_err(|e| anyhow::anyhow!("invalid option: {e}"))?;
    platform::set_threads(threads);
    log::info!("{threads} threads for the matrix products");
    let bundle = match bundle {
        Some(b) => b.to_path_buf(),
        None => default_bundle()?,
    };
    let model = CaptionModel::load(&bundle).with_context(|| format!("cannot load bundle {}", bundle.display()))?;
    let opts = options(&model, decoding.max_tokens, decoding.beam)?;
    Ok(Loaded { model, opts, bundle })
}

/// The model's default options with `max_tokens` and `beam` overriding them, checked against the
/// model.
pub fn options(model: &CaptionModel, max_tokens: Option<usize>, beam: Option<usize>) -> Result<GenerationOptions> {
    let mut opts = model.default_options();
    if let Some(n) = max_tokens {
        opts.max_tokens = n;
    }
    if let Some(b) = beam {
        opts.beam_width = b;
    }
    model.check_options(&opts)?;
    Ok(opts)
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
