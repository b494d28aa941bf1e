//! A model bundle on disk: a directory with `bundle.toml` and the files it names.
//!
//! Reading checks the manifest version, every file's presence, size and sha256 before anything
//! is parsed, so a bundle damaged in transit to the board is refused with the file's name rather
//! than failing somewhere inside inference. Writing (done by `host-tools export`) hashes each file
//! as it is written and writes the manifest last and atomically: a bundle without `bundle.toml`
//! is never mistaken for a complete one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::format::fsutil::write_atomic;
use crate::format::manifest::{role_name, FileEntry, FileRole, Manifest, FORMAT_VERSION, MANIFEST_FILE};
use crate::text::{collapse_whitespace, excerpt};

/// Written into a bundle's directory once its files have matched their hashes, so that later
/// starts skip the hashing (a third of a second for an int8 ViT-B/32 bundle on a 2-core x86, a
/// core's worth of time next to the loader; more on a board without SHA instructions) while the
/// files stay as they were. Damage without a write, such as a failing SD card, goes unseen
/// once stamped; [`Bundle::open`], which host-tools uses, always hashes.
pub const STAMP_FILE: &str = ".verified";

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{0}: not a bundle directory (no {MANIFEST_FILE})")]
    NoManifest(String),
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
    #[error("{path}: format_version {found} is not supported (this edgecap reads version {FORMAT_VERSION})")]
    Version { path: String, found: i64 },
    #[error("{path}: missing bundle file (role {role})")]
    MissingFile { path: String, role: &'static str },
    #[error("{path}: {message}")]
    BadFile { path: String, message: String },
    #[error("{path}: sha256 mismatch (manifest {expected}, file {actual}): the file is damaged or was replaced")]
    HashMismatch { path: String, expected: String, actual: String },
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A bundle whose manifest parsed and whose files all match their hashes.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads and verifies the bundle in `dir`, hashing every file.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let bundle = Bundle::read(dir)?;
        bundle.hash_all()?;
        Ok(bundle)
    }

    /// Reads and verifies the bundle in `dir`, hashing only if its files changed since it was
    /// last verified ([`STAMP_FILE`]), as the loader does.
    pub fn open_stamped(dir: &Path) -> Result<Bundle, BundleError> {
        let bundle = Bundle::read(dir)?;
        bundle.verify()?;
        Ok(bundle)
    }

    /// Reads the manifest and checks that each file is there with its size, without hashing:
    /// [`Bundle::verify`] must follow before the bundle is used (the crate's loader hashes while
    /// it parses).
    pub(crate) fn read(dir: &Path) -> Result<Bundle, BundleError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let shown = manifest_path.display().to_string();
        if !manifest_path.is_file() {
            return Err(BundleError::NoManifest(dir.display().to_string()));
        }
        let text = read_manifest(&manifest_path, &shown)?;
        let manifest = parse_manifest(&shown, &text)?;
        for entry in &manifest.files {
            check_size(dir, entry)?;
        }
        Ok(Bundle { dir: dir.to_path_buf(), manifest })
    }

    /// Checks every file against its sha256, unless the bundle's [`STAMP_FILE`] says they were
    /// checked and have not changed since.
    pub(crate) fn verify(&self) -> Result<(), BundleError> {
        let before = self.stamp();
        let stamp_path = self.dir.join(STAMP_FILE);
        if before.is_some() && std::fs::read_to_string(&stamp_path).ok() == before {
            log::debug!("{}: unchanged since verified, not hashed again", self.dir.display());
            return Ok(());
        }
        self.hash_all()?;
        // Stamped only if nothing changed while hashing. A bundle in a read-only place is
        // hashed at every start instead.
        match before.filter(|b| self.stamp().as_ref() == Some(b)) {
            Some(stamp) => {
                if let Err(e) = write_atomic(&stamp_path, stamp.as_bytes()) {
                    log::debug!("{}: not stamped as verified: {e}", stamp_path.display());
                }
            }
            None => log::debug!("{}: changed while verified, not stamped", self.dir.display()),
        }
        Ok(())
    }

    /// What the stamp of a verified bundle holds: for the manifest and each file, the hash the
    /// manifest expects and the file's identity (device, inode, size, modification and
    /// status-change times). Any write, rename or replacement changes the status-change time,
    /// which user space cannot set back. `None` where a file's metadata cannot be read.
    fn stamp(&self) -> Option<String> {
        let mut stamp = String::from("# edgecap: these files matched their sha256 when these lines were written\n");
        let files = self.manifest.files.iter().map(|e| (e.path.as_str(), e.sha256.as_str()));
        for (path, sha256) in std::iter::once((MANIFEST_FILE, "-")).chain(files) {
            let meta = std::fs::metadata(self.dir.join(path)).ok()?;
            stamp.push_str(&format!("{path} {sha256} {}\n", identity(&meta)?));
        }
        Some(stamp)
    }

    /// Hashes every file.
    fn hash_all(&self) -> Result<(), BundleError> {
        // Hashing hundreds of MB is a good part of start-up, so it runs beside the loader: on
        // every core but one, which is left to the loader (a thread per file made the loader
        // share its core with the hashing and start-up slower). The first failure in manifest
        // order is reported, as a sequential check would.
        let files = &self.manifest.files;
        let next = AtomicUsize::new(0);
        let threads = (crate::platform::available_cores() - 1).clamp(1, files.len().max(1));
        let mut checks: Vec<(usize, Result<(), BundleError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(entry) = files.get(i) else { return done };
                            done.push((i, verify_hash(&self.dir, entry)));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        checks.sort_by_key(|(i, _)| *i);
        checks.into_iter().try_for_each(|(_, check)| check)
    }

    /// The path of the file playing `role` (present: checked by `open`).
    pub fn path(&self, role: FileRole) -> PathBuf {
        let entry = self.manifest.file(role).expect("manifest checked at open");
        self.dir.join(&entry.path)
    }
}

/// A manifest is a few kilobytes; one past this is not a manifest, and is not read whole.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The manifest's text, at most [`MAX_MANIFEST_BYTES`] of it.
fn read_manifest(path: &Path, shown: &str) -> Result<String, BundleError> {
    let io = |source| BundleError::Io { path: shown.to_string(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(io)?.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    let bad = |message: String| BundleError::Manifest { path: shown.to_string(), message };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(bad(format!("larger than {} KiB: not a bundle manifest", MAX_MANIFEST_BYTES / 1024)));
    }
    String::from_utf8(bytes)
        .map_err(|e| bad(format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))
}

/// A TOML error as one short line: the parser's message and the line, without the quoted source
/// (which may be megabytes on one line, or control bytes).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map(|s| format!(" (line {})", text[..s.start.min(text.len())].matches('\n').count() + 1));
    excerpt(&collapse_whitespace(e.message()), 200).escape_debug().to_string() + &at.unwrap_or_default()
}

/// Parses manifest text; the version is checked before the rest so that a newer bundle gets the
/// version error rather than a confusing field error.
pub fn parse_manifest(shown: &str, text: &str) -> Result<Manifest, BundleError> {
    let bad = |message: String| BundleError::Manifest { path: shown.to_string(), message };
    let raw: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(toml_error(text, &e)))?;
    match raw.get("format_version").and_then(|v| v.as_integer()) {
        Some(v) if v == FORMAT_VERSION as i64 => {}
        Some(v) => return Err(BundleError::Version { path: shown.to_string(), found: v }),
        None => return Err(bad("no integer `format_version`".into())),
    }
    let manifest: Manifest = toml::from_str(text).map_err(|e| bad(toml_error(text, &e)))?;
    manifest.check().map_err(bad)?;
    Ok(manifest)
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    Some(format!(
        "{} {} {} {}.{:09} {}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

/// No status-change time to trust: never stamped, always hashed.
#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> Option<String> {
    None
}

fn check_size(dir: &Path, entry: &FileEntry) -> Result<(), BundleError> {
    let path = dir.join(&entry.path);
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Err(BundleError::BadFile { path: shown, message: "not a regular file".into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::MissingFile { path: shown, role: role_name(entry.role) })
        }
        Err(source) => return Err(BundleError::Io { path: shown, source }),
    };
    if meta.len() != entry.bytes {
        return Err(BundleError::BadFile {
            path: shown,
            message: format!("size {} bytes, manifest says {}", meta.len(), entry.bytes),
        });
    }
    Ok(())
}

fn verify_hash(dir: &Path, entry: &FileEntry) -> Result<(), BundleError> {
    let path = dir.join(&entry.path);
    let shown = path.display().to_string();
    let actual = sha256_file(&path).map_err(|source| BundleError::Io { path: shown.clone(), source })?;
    if !actual.eq_ignore_ascii_case(&entry.sha256) {
        return Err(BundleError::HashMismatch { path: shown, expected: entry.sha256.clone(), actual });
    }
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a bundle directory: files first, manifest last.
pub struct BundleWriter {
    dir: PathBuf,
    files: Vec<FileEntry>,
}

impl BundleWriter {
    /// Creates `dir` (and parents). An existing `bundle.toml` there is removed first so that a
    /// failed export cannot leave an old manifest describing new, different files.
    pub fn create(dir: &Path) -> std::io::Result<BundleWriter> {
        std::fs::create_dir_all(dir)?;
        match std::fs::remove_file(dir.join(MANIFEST_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(BundleWriter { dir: dir.to_path_buf(), files: Vec::new() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one file of the bundle and records its hash.
    pub fn add(&mut self, role: FileRole, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.dir.join(name), bytes)?;
        self.files.retain(|f| f.role != role);
        self.files.push(FileEntry {
            role,
            path: name.to_string(),
            sha256: hex(&Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        });
        Ok(())
    }

    /// Moves an already written file (e.g. a large memory streamed to a temporary path on the
    /// same file system) into the bundle as `name` and records its hash.
    pub fn add_file(&mut self, role: FileRole, name: &str, src: &Path) -> std::io::Result<()> {
        let dest = self.dir.join(name);
        if std::fs::rename(src, &dest).is_err() {
            std::fs::copy(src, &dest)?;
        }
        let sha256 = sha256_file(&dest)?;
        let bytes = std::fs::metadata(&dest)?.len();
        self.files.retain(|f| f.role != role);
        self.files.push(FileEntry { role, path: name.to_string(), sha256, bytes });
        Ok(())
    }

    /// Writes `bundle.toml` with the recorded files; `manifest.files` is replaced.
    pub fn finish(self, mut manifest: Manifest) -> Result<PathBuf, BundleError> {
        let path = self.dir.join(MANIFEST_FILE);
        let shown = path.display().to_string();
        manifest.files = self.files;
        manifest.check().map_err(|message| BundleError::Manifest { path: shown.clone(), message })?;
        let text = toml::to_string_pretty(&manifest)
            .map_err(|e| BundleError::Manifest { path: shown.clone(), message: e.to_string() })?;
        write_atomic(&path, text.as_bytes()).map_err(|source| BundleError::Io { path: shown, source })?;
        Ok(path)
    }
}
