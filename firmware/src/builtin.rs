//! The default model built into the binary (see `build.rs`): `edgecap caption IMAGE` works from
//! a copy of the binary alone. The engine loads bundles from directories, so the embedded files
//! are written once into a per-user cache directory named by their content id, and verified
//! there like any bundle (the manifest's sha256 of every file, or the stamp of that check while
//! the files are unchanged) each time they are loaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::fsutil::write_atomic;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/builtin_model.rs"));
}

/// Whether this binary was built with a default model.
pub fn available() -> bool {
    embedded::FILES.iter().any(|(name, _)| *name == "bundle.toml")
}

/// The built-in bundle's directory, written out on first use.
pub fn bundle_dir() -> Result<PathBuf> {
    if !available() {
        bail!("this edgecap was built without a default model (models/default was empty)");
    }
    let dir = cache_root().join(format!("builtin-{}", embedded::ID));
    // Written out again when missing or damaged (a disk error, a user's edit): the binary holds
    // the pristine copy.
    if edgecap_engine::bundle::Bundle::open_stamped(&dir).is_err() {
        write_out(&dir).with_context(|| format!("{}: cannot write the built-in model", dir.display()))?;
    }
    Ok(dir)
}

/// `$XDG_CACHE_HOME/edgecap`, `~/.cache/edgecap`, else the temporary directory (a system user
/// without a home still gets its captions).
fn cache_root() -> PathBuf {
    let home_cache = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache"));
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or(home_cache)
        .filter(|d| std::fs::create_dir_all(d.join("edgecap")).is_ok())
        .map_or_else(|| std::env::temp_dir().join("edgecap"), |d| d.join("edgecap"))
}

/// Writes every file, the manifest last (a bundle without `bundle.toml` is never taken for a
/// complete one), each atomically: two processes starting at once write identical bytes.
fn write_out(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut manifest = None;
    for (name, bytes) in embedded::FILES {
        if *name == "bundle.toml" {
            manifest = Some(bytes);
            continue;
        }
        write_atomic(&dir.join(name), bytes)?;
    }
    if let Some(bytes) = manifest {
        write_atomic(&dir.join("bundle.toml"), bytes)?;
    }
    Ok(())
}
