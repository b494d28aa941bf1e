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

/// The built-in bundle's directory, written out on first use into a cache only this user can
/// write, and taken only when its manifest is the one this binary carries (so its files are
/// checked against this binary's hashes): another bundle put there is never used as the
/// built-in model. Where there is no such cache, or it cannot be written (a read-only home), a
/// private temporary copy serves this run.
pub fn bundle_dir() -> Result<PathBuf> {
    if !available() {
        bail!("this edgecap was built without a default model (models/default was empty)");
    }
    let name = format!("builtin-{}", embedded::ID);
    for root in cache_roots() {
        let Some(root) = private_dir(&root) else { continue };
        let dir = root.join(&name);
        if is_pristine(&dir) {
            return Ok(dir);
        }
        // Missing or damaged (a disk error, a user's edit, another bundle): the binary holds the
        // pristine copy.
        let _ = std::fs::remove_dir_all(&dir);
        match write_out(&dir) {
            Ok(()) if is_pristine(&dir) => return Ok(dir),
            Ok(()) => log::warn!("{}: the built-in model does not verify once written", dir.display()),
            Err(e) => log::warn!("{}: cannot write the built-in model: {e}", dir.display()),
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("edgecap-builtin-")
        .tempdir()
        .context("cannot make a private temporary directory")?;
    // Kept for the process's life: the engine maps files from it. Removed at exit by nobody; a
    // temporary directory's cleaner takes it, and it is written only when no cache could be.
    let dir = tmp.keep();
    write_out(&dir).with_context(|| format!("{}: cannot write the built-in model", dir.display()))?;
    log::warn!("using a private temporary copy of the built-in model in {}", dir.display());
    Ok(dir)
}

/// The bundle in `dir` is this binary's: its manifest byte for byte, its files matching the
/// manifest's hashes (or the stamp of that check, in a directory only this user can write).
fn is_pristine(dir: &Path) -> bool {
    let manifest = embedded::FILES.iter().find(|(name, _)| *name == "bundle.toml").map(|(_, bytes)| *bytes);
    std::fs::read(dir.join("bundle.toml")).ok().as_deref() == manifest
        && edgecap_engine::bundle::Bundle::open_stamped(dir).is_ok()
}

/// `$XDG_CACHE_HOME/edgecap`, `~/.cache/edgecap`, then `<temporary directory>/edgecap-<uid>`
/// (a system user without a home still gets its captions).
fn cache_roots() -> Vec<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("edgecap"));
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/edgecap"));
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let tmp = std::env::temp_dir().join(format!("edgecap-{uid}"));
    xdg.into_iter().chain(home).chain([tmp]).collect()
}

/// `dir`, created if need be, when it is a real directory (not a link) that this user owns and
/// nobody else may write (0700 when this user created it; 0755 or tighter accepted).
fn private_dir(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).ok()?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let meta = std::fs::symlink_metadata(dir).ok()?;
    // SAFETY: as above.
    let owned = meta.uid() == unsafe { libc::geteuid() };
    let private = meta.file_type().is_dir() && owned && meta.mode() & 0o022 == 0;
    if !private {
        log::warn!("{}: not a private directory of this user; the built-in model is not cached there", dir.display());
    }
    private.then(|| dir.to_path_buf())
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
