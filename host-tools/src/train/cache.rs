//! CLIP embeddings computed once per data set and reused by later runs (and by resumes): an
//! epoch of training costs less than embedding the data again with the CLIP tower.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

use super::params::save_safetensors_with;
use crate::tensor::{Tensor, TensorMap};

/// Rows [N, dim] stored at `path` under `key` (what they were computed from): read back when the
/// key matches, else computed by `compute` and stored.
pub fn rows(path: &Path, key: &str, compute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    if let Some(t) = read(path, key) {
        log::info!("{}: reusing cached embeddings", path.display());
        return Ok(t);
    }
    let t = compute()?;
    let mut map = TensorMap::new();
    map.insert("rows", t.clone());
    save_safetensors_with(path, &map, Some(HashMap::from([("key".to_string(), key.to_string())])))?;
    Ok(t)
}

fn read(path: &Path, key: &str) -> Option<Tensor> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).ok()?;
    if meta.metadata().as_ref()?.get("key")? != key {
        return None;
    }
    let st = SafeTensors::deserialize(&bytes).ok()?;
    let view = st.tensor("rows").ok()?;
    let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Tensor::new(view.shape().to_vec(), data).ok()
}

/// A key naming the inputs: hex sha256 of the parts.
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What identifies a model directory's contents cheaply: each file's name, size and
/// modification time (hashing a 600 MB CLIP on every run would cost more than it saves).
pub fn dir_fingerprint(dir: &Path) -> Result<Vec<u8>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for e in entries {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        out.extend(e.file_name().to_string_lossy().as_bytes());
        out.extend(meta.len().to_le_bytes());
        out.extend(modified.map_or(0, |d| d.as_nanos()).to_le_bytes());
    }
    Ok(out)
}
