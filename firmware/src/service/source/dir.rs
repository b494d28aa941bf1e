//! `dir:PATH` and `file:PATH`: images a capture script writes. A file is taken once its size and
//! modification time have stayed the same across two polls, so a half-written JPEG is not read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::stream::MAX_FRAME_BYTES;
use super::SourceContext;
use crate::service::log_limit::LogLimit;
use crate::service::slot::FrameData;

const POLL: Duration = Duration::from_millis(200);

/// Size and modification time: a file whose signature holds still is complete.
type Signature = (u64, Option<SystemTime>);

/// State of one file in the folder.
enum Seen {
    /// Seen growing (or just appeared) with this signature.
    Pending(Signature),
    /// Handed over (or skipped) with this signature; read again only if it changes (a writer
    /// that paused mid-file and then finished it, or a file rewritten in place).
    Done(Signature),
}

pub struct Watcher {
    dir: PathBuf,
    /// Only names currently in the folder are kept, so this stays as small as the folder.
    files: HashMap<PathBuf, Seen>,
    /// The folder unreadable (deleted, unmounted) fails every poll, five a second.
    list_failures: LogLimit,
}

impl Watcher {
    pub fn new(dir: &Path) -> Result<Watcher> {
        if !std::fs::metadata(dir).with_context(|| format!("source dir:{}", dir.display()))?.is_dir() {
            bail!("source dir:{}: not a directory", dir.display());
        }
        Ok(Watcher { dir: dir.to_path_buf(), files: HashMap::new(), list_failures: LogLimit::default() })
    }

    /// Live: polls forever. `--once`: takes the files present at the first poll, then returns.
    pub fn run(&mut self, ctx: &SourceContext) {
        let initial: Option<Vec<PathBuf>> =
            if ctx.once { Some(self.list().into_iter().map(|e| e.0).collect()) } else { None };
        while !ctx.stopped() {
            for (path, sig) in self.list() {
                if initial.as_ref().is_some_and(|names| !names.contains(&path)) {
                    continue;
                }
                if self.ready(&path, sig, ctx.once) && !take(&path, ctx) {
                    return;
                }
            }
            let live: Vec<PathBuf> = self.list().into_iter().map(|e| e.0).collect();
            self.files.retain(|p, _| live.contains(p));
            if let Some(names) = &initial {
                if names.iter().all(|n| matches!(self.files.get(n), Some(Seen::Done(_))) || !live.contains(n)) {
                    return;
                }
            }
            ctx.sleep(POLL);
        }
    }

    /// True the first time `path` is seen complete. An empty file may still be being created,
    /// except in `--once` mode, where it is taken (and reported as empty).
    fn ready(&mut self, path: &Path, sig: Signature, allow_empty: bool) -> bool {
        match self.files.get(path) {
            Some(Seen::Done(done)) if *done == sig => false,
            Some(Seen::Pending(prev)) if *prev == sig && (sig.0 > 0 || allow_empty) => {
                self.files.insert(path.to_path_buf(), Seen::Done(sig));
                true
            }
            _ => {
                self.files.insert(path.to_path_buf(), Seen::Pending(sig));
                false
            }
        }
    }

    /// Regular, non-hidden files (a writer's `.name.tmp` is ignored), in name order.
    fn list(&mut self) -> Vec<(PathBuf, Signature)> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                if let Some(note) = self.list_failures.check() {
                    log::warn!("source dir:{}: {e}{note}", self.dir.display());
                }
                return Vec::new();
            }
        };
        let mut files: Vec<(PathBuf, Signature)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(|m| m.is_file())?;
                Some((e.path(), (meta.len(), meta.modified().ok())))
            })
            .collect();
        files.sort();
        files
    }
}

/// Reads a complete file and hands it over; false when the service is stopping.
fn take(path: &Path, ctx: &SourceContext) -> bool {
    let name = path.display().to_string();
    match std::fs::metadata(path).map(|m| m.len()) {
        Ok(len) if len as usize > MAX_FRAME_BYTES => {
            ctx.stats.frames.inc();
            ctx.stats.corrupt.inc();
            log::warn!("{name}: skipped: {len} bytes is more than the {MAX_FRAME_BYTES}-byte frame limit");
            return true;
        }
        _ => {}
    }
    match std::fs::read(path) {
        Ok(bytes) => ctx.put(name, FrameData::Encoded(bytes)),
        Err(e) => {
            log::warn!("{name}: skipped: {e}"); // deleted between listing and reading
            true
        }
    }
}

/// `file:PATH` must name a regular file: a directory, a FIFO or a device has no size that
/// settles, so the watcher would wait on it forever (a stream goes to `-`, stdin).
pub fn check_file_source(path: &Path) -> Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_dir() {
        bail!("a directory (use dir:PATH to watch a folder)");
    }
    if !kind.is_file() {
        bail!("not a regular file (a FIFO or device: give a stream on stdin with --source -)");
    }
    Ok(())
}

/// `file:PATH`: the file now, then again each time it is replaced (a snapshot tool rewriting it).
/// An empty file waits to be written, except with `--once`, where it is taken (and counted
/// corrupt) rather than waited on forever.
pub fn watch_file(path: &Path, ctx: &SourceContext) {
    let signature = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    let mut last_taken = None;
    let mut previous = None;
    while !ctx.stopped() {
        let now = signature(path);
        let settled = now.is_some() && now == previous && now.is_some_and(|s| s.0 > 0 || ctx.once);
        if settled && now != last_taken {
            last_taken = now;
            if !take(path, ctx) || ctx.once {
                return;
            }
        }
        previous = now;
        ctx.sleep(POLL);
    }
}
