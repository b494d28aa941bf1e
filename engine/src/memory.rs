//! DeCap's support memory: L2-normalised CLIP text embeddings of a caption corpus, and the
//! projection that carries an image embedding across CLIP's modality gap onto them.
//!
//! File format: a safetensors file with `embeddings` [M, E] (F32, or I8 with per-row `scales`
//! [M] F32, value = i8 · scale) and `__metadata__` `format = "edgecap-memory"`. Safetensors is a
//! header plus raw little-endian arrays, so a host can stream a memory of any size to disk.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

use crate::logits::top_k;

pub const MEMORY_FORMAT: &str = "edgecap-memory";

#[derive(Debug, Error)]
#[error("{path}: {problem}")]
pub struct MemoryError {
    pub path: String,
    pub problem: String,
}

/// How the embeddings are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryValues {
    F32(Vec<f32>),
    /// Symmetric per-row int8: row r's values are `values[r·E..] · scales[r]`.
    I8 {
        values: Vec<i8>,
        scales: Vec<f32>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupportMemory {
    pub rows: usize,
    pub dim: usize,
    pub values: MemoryValues,
}

impl SupportMemory {
    /// Reads a memory file, checking its format tag, dtypes and shapes.
    pub fn read(path: &Path) -> Result<SupportMemory, MemoryError> {
        let shown = path.display().to_string();
        let err = |problem: String| MemoryError { path: shown.clone(), problem };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let format = header.metadata().as_ref().and_then(|m| m.get("format")).cloned();
        if format.as_deref() != Some(MEMORY_FORMAT) {
            return Err(err(format!("not an edgecap support memory (metadata format = {format:?})")));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let emb = st.tensor("embeddings").map_err(|_| err("no `embeddings` tensor".into()))?;
        let &[rows, dim] = emb.shape() else {
            return Err(err(format!("`embeddings` has shape {:?}, expected [rows, dim]", emb.shape())));
        };
        if rows == 0 || dim == 0 {
            return Err(err(format!("`embeddings` is empty ({rows}×{dim})")));
        }
        let values = match emb.dtype() {
            Dtype::F32 => MemoryValues::F32(f32s(emb.data())),
            Dtype::I8 => {
                let scales = st.tensor("scales").map_err(|_| err("int8 `embeddings` without `scales`".into()))?;
                if scales.dtype() != Dtype::F32 || scales.shape() != [rows] {
                    return Err(err(format!(
                        "`scales` must be F32 [{rows}], got {:?} {:?}",
                        scales.dtype(),
                        scales.shape()
                    )));
                }
                let values = emb.data().iter().map(|&b| b as i8).collect();
                MemoryValues::I8 { values, scales: f32s(scales.data()) }
            }
            other => return Err(err(format!("`embeddings` has dtype {other:?}, expected F32 or I8"))),
        };
        let finite = match &values {
            MemoryValues::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| ("embeddings", i / dim)),
            MemoryValues::I8 { scales, .. } => scales.iter().position(|x| !x.is_finite()).map(|i| ("scales", i)),
        };
        if let Some((tensor, row)) = finite {
            return Err(err(format!("`{tensor}` row {row} holds a non-finite value (NaN or infinity)")));
        }
        Ok(SupportMemory { rows, dim, values })
    }

    /// Row `r` as f32.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let range = r * self.dim..(r + 1) * self.dim;
        match &self.values {
            MemoryValues::F32(v) => v[range].to_vec(),
            MemoryValues::I8 { values, scales } => values[range].iter().map(|&q| f32::from(q) * scales[r]).collect(),
        }
    }

    /// Dot product of every row with `x`.
    pub fn similarities(&self, x: &[f32]) -> Vec<f32> {
        match &self.values {
            MemoryValues::F32(v) => v.chunks_exact(self.dim).map(|row| dot(row, x)).collect(),
            MemoryValues::I8 { values, scales } => values
                .chunks_exact(self.dim)
                .zip(scales)
                .map(|(row, s)| row.iter().zip(x).map(|(&q, &b)| f32::from(q) * b).sum::<f32>() * s)
                .collect(),
        }
    }

    /// DeCap's projection: with x = image/|image|, weights = softmax(M·x / τ) over the memory (or
    /// over its `top_k` most similar rows only), result = Σ wᵢ·mᵢ renormalised to unit length.
    pub fn project(&self, image: &[f32], temperature: f32, top_k_rows: Option<usize>) -> Vec<f32> {
        let norm = dot(image, image).sqrt().max(f32::MIN_POSITIVE);
        let x: Vec<f32> = image.iter().map(|v| v / norm).collect();
        let sims = self.similarities(&x);
        let chosen: Vec<(usize, f32)> = match top_k_rows {
            Some(k) if k < self.rows => top_k(&sims, k),
            _ => sims.into_iter().enumerate().collect(),
        };
        let max = chosen.iter().map(|&(_, s)| s).fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = chosen.iter().map(|&(_, s)| ((s - max) / temperature).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut out = vec![0f32; self.dim];
        for (&(r, _), w) in chosen.iter().zip(&weights) {
            for (o, m) in out.iter_mut().zip(self.row(r)) {
                *o += w / total * m;
            }
        }
        let n = dot(&out, &out).sqrt().max(f32::MIN_POSITIVE);
        out.iter_mut().for_each(|v| *v /= n);
        out
    }

    /// The whole memory as a safetensors file.
    pub fn to_bytes(&self, metadata: &HashMap<String, String>) -> Vec<u8> {
        let (dtype, data) = match &self.values {
            MemoryValues::F32(v) => ("F32", v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
            MemoryValues::I8 { values, .. } => ("I8", values.iter().map(|&q| q as u8).collect()),
        };
        let scales = match &self.values {
            MemoryValues::I8 { scales, .. } => Some(scales.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
            MemoryValues::F32(_) => None,
        };
        let mut bytes = safetensors_header(self.rows, self.dim, dtype, metadata);
        bytes.extend_from_slice(&data);
        if let Some(s) = scales {
            bytes.extend_from_slice(&s);
        }
        bytes
    }
}

/// The safetensors header (length prefix + JSON, space-padded to 8 bytes) for a memory of
/// `rows`×`dim` `dtype` ("F32" or "I8", the latter followed by F32 `scales`); the arrays follow
/// it in that order. Lets a writer stream the data after the header. Adds the format tag.
pub fn safetensors_header(rows: usize, dim: usize, dtype: &str, metadata: &HashMap<String, String>) -> Vec<u8> {
    let mut metadata = metadata.clone();
    metadata.insert("format".into(), MEMORY_FORMAT.into());
    let elem = if dtype == "I8" { 1 } else { 4 };
    let data_end = rows * dim * elem;
    let mut header = serde_json::json!({
        "__metadata__": metadata,
        "embeddings": {"dtype": dtype, "shape": [rows, dim], "data_offsets": [0, data_end]},
    });
    if dtype == "I8" {
        header["scales"] =
            serde_json::json!({"dtype": "F32", "shape": [rows], "data_offsets": [data_end, data_end + rows * 4]});
    }
    let mut json = header.to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

/// Symmetric per-row int8 of one L2-normalised row: scale = max|v| / 127.
pub fn quantize_row(row: &[f32]) -> (Vec<i8>, f32) {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    (row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8).collect(), scale)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(rows: &[[f32; 2]]) -> SupportMemory {
        SupportMemory { rows: rows.len(), dim: 2, values: MemoryValues::F32(rows.iter().flatten().copied().collect()) }
    }

    #[test]
    fn projection_is_a_unit_softmax_mixture() {
        let m = memory(&[[1.0, 0.0], [0.0, 1.0]]);
        // Equal similarity: equal weights, renormalised.
        let p = m.project(&[3.0, 3.0], 0.01, None);
        assert!((p[0] - p[1]).abs() < 1e-6 && (p[0] - 0.5f32.sqrt()).abs() < 1e-6);
        // A low temperature picks the nearest row; top-1 picks it exactly.
        let p = m.project(&[1.0, 0.9], 0.01, None);
        assert!(p[0] > 0.99, "{p:?}");
        assert_eq!(m.project(&[1.0, 0.9], 0.01, Some(1)), vec![1.0, 0.0]);
    }

    #[test]
    fn round_trips_through_safetensors_in_both_precisions() {
        let dir = tempfile::tempdir().unwrap();
        let m = memory(&[[0.6, 0.8], [-1.0, 0.0]]);
        let meta = HashMap::from([("count".to_string(), "2".to_string())]);
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, m.to_bytes(&meta)).unwrap();
        assert_eq!(SupportMemory::read(&path).unwrap(), m);

        let (q0, s0) = quantize_row(&[0.6, 0.8]);
        let (q1, s1) = quantize_row(&[-1.0, 0.0]);
        let q = SupportMemory {
            rows: 2,
            dim: 2,
            values: MemoryValues::I8 { values: [q0, q1].concat(), scales: vec![s0, s1] },
        };
        std::fs::write(&path, q.to_bytes(&meta)).unwrap();
        let back = SupportMemory::read(&path).unwrap();
        assert_eq!(back, q);
        assert!((back.row(0)[1] - 0.8).abs() < 0.8 / 127.0);
    }

    #[test]
    fn non_finite_values_are_refused_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let meta = HashMap::new();
        std::fs::write(&path, memory(&[[0.6, 0.8], [f32::NAN, 0.0]]).to_bytes(&meta)).unwrap();
        let e = SupportMemory::read(&path).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("`embeddings` row 1 holds a non-finite value"), "{e}");
        let q = SupportMemory {
            rows: 1,
            dim: 2,
            values: MemoryValues::I8 { values: vec![1, 2], scales: vec![f32::INFINITY] },
        };
        std::fs::write(&path, q.to_bytes(&meta)).unwrap();
        let e = SupportMemory::read(&path).unwrap_err().to_string();
        assert!(e.contains("`scales` row 0 holds a non-finite value"), "{e}");
    }

    #[test]
    fn foreign_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"not safetensors").unwrap();
        let e = SupportMemory::read(&path).unwrap_err().to_string();
        assert!(e.contains("x.safetensors") && e.contains("not a safetensors file"), "{e}");
        let untagged = br#"{"embeddings":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}}"#;
        let mut bytes = (untagged.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(untagged);
        bytes.extend_from_slice(&1f32.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        let e = SupportMemory::read(&path).unwrap_err().to_string();
        assert!(e.contains("not an edgecap support memory"), "{e}");
    }
}
