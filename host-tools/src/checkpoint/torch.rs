//! PyTorch checkpoints written by `torch.save` (zip format, torch >= 1.6), read without Python.
//!
//! The archive holds `<archive>/data.pkl` (the pickled object), one `<archive>/data/<key>` file per
//! storage and optionally `<archive>/byteorder`. `data.pkl` is decoded by the restricted
//! unpickler of [`super::pickle`], which refuses every global outside a small allow-list: nothing
//! in the file is ever executed or emulated. This module reads the archive and turns the
//! (possibly strided, possibly shared) storage views the pickle describes into f32 tensors.
//!
//! Every length read from the file is checked against the bytes actually present before it is
//! used to allocate, and the tensors a pickle describes may not expand beyond a fixed multiple of
//! the file size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use zip::ZipArchive;

use super::pickle::{unpickle, PickleError, TensorRef, TensorSpec, Unpickled};
use super::{one_line, CheckpointError};
use crate::tensor::{Tensor, TensorMap};

/// Reads the tensors of a `torch.save(state_dict)` zip checkpoint, converted to f32.
///
/// The top-level object must be a dict of tensors; a dict holding one such dict under
/// `state_dict` or `model` (training checkpoints) is read through. Non-tensor entries are skipped.
pub fn read_torch(path: &Path) -> Result<TensorMap, CheckpointError> {
    let mut file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| CheckpointError::io(path, e))?.len();
    let mut first = [0u8; 1];
    if super::read_up_to(&mut file, &mut first).map_err(|e| CheckpointError::io(path, e))? == 1 && first[0] == 0x80 {
        return Err(CheckpointError::LegacyTorch { path: path.to_path_buf() });
    }
    file.rewind().map_err(|e| CheckpointError::io(path, e))?;
    let zip_err =
        |e: zip::result::ZipError| CheckpointError::Zip { path: path.to_path_buf(), detail: one_line(&e.to_string()) };
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    let mut reader = ArchiveReader { path, archive: &mut archive, file_len, prefix: String::new() };
    reader.prefix = reader.find_prefix()?;
    let big_endian = reader.big_endian()?;
    let pickle = reader.read_entry("data.pkl")?;

    let parsed = unpickle(&pickle).map_err(|e| match e {
        PickleError::Refused(name) => CheckpointError::RefusedGlobal { path: path.to_path_buf(), name },
        PickleError::Bad { offset, detail } => CheckpointError::Pickle { path: path.to_path_buf(), offset, detail },
    })?;
    let entries = parsed.state_dict().map_err(|detail| CheckpointError::invalid(path, detail))?;
    materialise_all(&mut reader, &parsed, &entries, big_endian)
}

/// Decodes every tensor, reading each storage file once (views may share one).
fn materialise_all(
    reader: &mut ArchiveReader,
    parsed: &Unpickled,
    entries: &[(&str, TensorSpec)],
    big_endian: bool,
) -> Result<TensorMap, CheckpointError> {
    // Views of shared storage can repeat data; cap the total (values plus name bytes) so a small
    // file cannot ask for terabytes. Each stored byte may become at most one element, viewed a
    // few times over.
    let budget = reader.file_len.saturating_mul(8).saturating_add(1 << 20);
    let mut produced: u64 = 0;
    // How many tensors still need each storage: its bytes are dropped after the last one, so
    // the peak is about the output plus the largest storage, not twice the file.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for &(_, spec) in entries {
        *uses.entry(parsed.storage_key(spec)).or_default() += 1;
    }
    let mut storages: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut out = TensorMap::new();
    for &(name, spec) in entries {
        let key = parsed.storage_key(spec);
        if !storages.contains_key(key) {
            let bytes = reader.read_entry(&format!("data/{key}"))?;
            storages.insert(key, bytes);
        }
        let bytes = storages.get(key).map(Vec::as_slice).unwrap_or_default();
        let tensor = materialise(&parsed.tensor_ref(spec), bytes, big_endian)
            .map_err(|e| CheckpointError::invalid(reader.path, format!("tensor `{}`: {e}", one_line(name))))?;
        if let Some(n) = uses.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                storages.remove(key);
            }
        }
        produced = produced.saturating_add(tensor.len() as u64 + name.len() as u64);
        if produced > budget {
            return Err(CheckpointError::invalid(
                reader.path,
                format!("tensors expand to more than {budget} values from a {}-byte file", reader.file_len),
            ));
        }
        out.insert(name, tensor);
    }
    Ok(out)
}

/// Reads entries of the torch archive, bounded by the file size.
struct ArchiveReader<'a> {
    path: &'a Path,
    archive: &'a mut ZipArchive<BufReader<File>>,
    file_len: u64,
    /// `<archive>/`: the top folder, whose name varies with the file torch.save was given.
    prefix: String,
}

impl ArchiveReader<'_> {
    fn zip_error(&self, detail: impl AsRef<str>) -> CheckpointError {
        CheckpointError::Zip { path: self.path.to_path_buf(), detail: one_line(detail.as_ref()) }
    }

    /// The folder holding `data.pkl`, with its trailing slash.
    fn find_prefix(&self) -> Result<String, CheckpointError> {
        let mut found = self
            .archive
            .file_names()
            .filter_map(|n| n.strip_suffix("data.pkl"))
            .filter(|p| p.ends_with('/') && p.matches('/').count() == 1);
        match (found.next(), found.next()) {
            (Some(p), None) => Ok(p.to_string()),
            (None, _) => Err(CheckpointError::UnknownFormat {
                path: self.path.to_path_buf(),
                detail: "a zip archive without <archive>/data.pkl".into(),
            }),
            (Some(_), Some(_)) => Err(self.zip_error("several <archive>/data.pkl entries")),
        }
    }

    /// Storage byte order: `byteorder` says `little` or `big`; absent means little (torch < 1.13).
    fn big_endian(&mut self) -> Result<bool, CheckpointError> {
        let name = format!("{}byteorder", self.prefix);
        if self.archive.index_for_name(&name).is_none() {
            return Ok(false);
        }
        let text = self.read_entry("byteorder")?;
        match text.trim_ascii() {
            b"little" => Ok(false),
            b"big" => Ok(true),
            other => Err(self.zip_error(format!("byteorder says {:?}", String::from_utf8_lossy(other)))),
        }
    }

    /// The bytes of `<archive>/<name>`, CRC-checked. Entries may not claim more than 16× the file
    /// size: torch stores them uncompressed, so anything larger is a zip bomb, not a checkpoint.
    fn read_entry(&mut self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let full = format!("{}{}", self.prefix, name);
        let limit = self.file_len.saturating_mul(16);
        let path = self.path;
        let err = |detail: String| CheckpointError::Zip { path: path.to_path_buf(), detail: one_line(&detail) };
        let entry = self.archive.by_name(&full).map_err(|e| err(format!("{full}: {e}")))?;
        let declared = entry.size();
        if declared > limit {
            return Err(err(format!("{full} claims {declared} bytes in a {}-byte file", self.file_len)));
        }
        let capacity = usize::try_from(declared.min(self.file_len)).unwrap_or(0);
        let mut bytes = Vec::with_capacity(capacity);
        // One byte past the declared size: reaching the entry's end is what runs the CRC check,
        // and an entry longer than declared shows up as a length mismatch.
        entry.take(declared.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| err(format!("{full}: {e}")))?;
        if bytes.len() as u64 != declared {
            return Err(err(format!("{full} holds {} of its {declared} bytes", bytes.len())));
        }
        Ok(bytes)
    }
}

/// Copies a (possibly strided) view out of its storage into a contiguous row-major tensor.
pub(super) fn materialise(t: &TensorRef, storage: &[u8], big_endian: bool) -> Result<Tensor, String> {
    let numel = t.size.iter().try_fold(1usize, |n, &s| n.checked_mul(s)).ok_or("element count overflows")?;
    if numel == 0 {
        return Tensor::new(t.size.clone(), Vec::new()).map_err(|e| e.to_string());
    }
    let elem = t.dtype.size();
    let available = storage.len() / elem;
    // The highest element the view touches (sizes are all >= 1 here).
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&s, &st)| (s - 1).checked_mul(st).and_then(|step| acc.checked_add(step)));
    let last = last.ok_or("strides overflow")?;
    if last >= available {
        return Err(format!(
            "reads element {last} but storage data/{} holds only {available} elements",
            one_line(&t.key)
        ));
    }
    if numel > available {
        return Err(format!(
            "{numel} elements from a storage of {available} (expanded views are not supported: save .contiguous())"
        ));
    }
    let data = if is_row_major(&t.size, &t.stride) {
        t.dtype.decode(&storage[t.offset * elem..(t.offset + numel) * elem], big_endian)
    } else {
        let span = t.dtype.decode(&storage[t.offset * elem..(last + 1) * elem], big_endian);
        gather(&span, &t.size, &t.stride, numel)
    };
    Tensor::new(t.size.clone(), data).map_err(|e| e.to_string())
}

/// Whether `stride` is the contiguous row-major layout of `size` (size-1 dims may have any stride).
fn is_row_major(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(s);
    }
    true
}

/// Walks the view in row-major order. `span[0]` is the view's first element; every index is
/// within `span` because `materialise` checked the highest one.
fn gather(span: &[f32], size: &[usize], stride: &[usize], numel: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; size.len()];
    let mut src = 0usize;
    for _ in 0..numel {
        out.push(span.get(src).copied().unwrap_or(f32::NAN));
        for d in (0..size.len()).rev() {
            index[d] += 1;
            src = src.wrapping_add(stride[d]);
            if index[d] < size[d] {
                break;
            }
            src = src.wrapping_sub(stride[d].wrapping_mul(size[d]));
            index[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::DType;

    fn tensor_ref(offset: usize, size: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef { key: "0".into(), dtype: DType::F32, offset, size: size.to_vec(), stride: stride.to_vec() }
    }

    fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    #[test]
    fn strided_views_are_materialised_row_major() {
        let storage = f32_bytes((0..12).map(|i| i as f32));
        // Transpose of a 3x4 matrix.
        let t = materialise(&tensor_ref(0, &[4, 3], &[1, 4]), &storage, false).unwrap();
        assert_eq!(t.data, vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        // Column 2 of the 3x4 matrix, starting at offset 2.
        let t = materialise(&tensor_ref(2, &[3], &[4]), &storage, false).unwrap();
        assert_eq!(t.data, vec![2., 6., 10.]);
        // 0-d scalar at offset 5.
        let t = materialise(&tensor_ref(5, &[], &[]), &storage, false).unwrap();
        assert_eq!((t.shape.len(), t.data), (0, vec![5.]));
    }

    #[test]
    fn views_past_their_storage_or_expanded_are_refused() {
        let storage = f32_bytes([1., 2., 3.]);
        let err = materialise(&tensor_ref(1, &[3], &[1]), &storage, false).unwrap_err();
        assert!(err.contains("reads element 3 but storage data/0 holds only 3 elements"), "{err}");
        let err = materialise(&tensor_ref(0, &[1000], &[0]), &storage, false).unwrap_err();
        assert!(err.contains("expanded"), "{err}");
        let err = materialise(&tensor_ref(0, &[usize::MAX, 2], &[1, 1]), &storage, false).unwrap_err();
        assert!(err.contains("overflow"), "{err}");
    }
}
