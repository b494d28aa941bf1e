//! Minimal NumPy `.npy` (format 1.0) reading and writing for little-endian f32, f16, i64, u8
//! arrays.
//!
//! Bundles keep the token-embedding table as `.npy`, `host-tools trace` writes intermediate
//! tensors as `.npy` so they open directly in NumPy next to the PyTorch reference.

use std::io::Read;
use std::path::Path;

use thiserror::Error;
pub use tract_onnx::prelude::f16;

#[derive(Debug, Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a .npy file ({reason})")]
    Format { path: String, reason: String },
}

/// Element types the engine reads and writes.
pub trait NpyElement: Copy + Sized {
    const DESCR: &'static str;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(bytes: &[u8]) -> Self;
}

impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes())
    }
    fn read_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl NpyElement for f16 {
    const DESCR: &'static str = "<f2";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes())
    }
    fn read_le(b: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl NpyElement for i64 {
    const DESCR: &'static str = "<i8";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes())
    }
    fn read_le(b: &[u8]) -> Self {
        i64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }
}

impl NpyElement for u8 {
    const DESCR: &'static str = "|u1";
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self)
    }
    fn read_le(b: &[u8]) -> Self {
        b[0]
    }
}

/// Serialises `data` with `shape` into `.npy` bytes.
pub fn to_bytes<T: NpyElement>(shape: &[usize], data: &[T]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", T::DESCR, shape_txt);
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + std::mem::size_of_val(data));
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in data {
        v.write_le(&mut out);
    }
    out
}

/// Writes an `.npy` file atomically (temporary file, then rename).
pub fn write<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), NpyError> {
    let io = |source| NpyError::Io { path: path.display().to_string(), source };
    crate::format::fsutil::write_atomic(path, &to_bytes(shape, data)).map_err(io)
}

/// The parts of an `.npy` header the engine uses.
struct Header {
    descr: String,
    shape: Vec<usize>,
    data_start: usize,
}

/// Where the header text starts and ends (the data's start), from the first [`PREAMBLE`] bytes.
fn header_extent(name: &str, bytes: &[u8]) -> Result<(usize, usize), NpyError> {
    let bad = |reason: String| NpyError::Format { path: name.to_string(), reason };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing NUMPY magic".into()));
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(format!("unsupported version {v}"))),
    };
    // checked: a version-2 length near u32::MAX would wrap a 32-bit usize (armv7 boards).
    let data_start = header_start.checked_add(header_len).ok_or_else(|| bad("header length overflows".into()))?;
    Ok((header_start, data_start))
}

/// Bytes that hold the magic, the version and the header's length in every version.
const PREAMBLE: usize = 12;

fn parse_header(name: &str, bytes: &[u8]) -> Result<Header, NpyError> {
    let bad = |reason: String| NpyError::Format { path: name.to_string(), reason };
    let (header_start, data_start) = header_extent(name, bytes)?;
    if data_start > bytes.len() {
        return Err(bad("header runs past the end of the file".into()));
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| bad("header is not text".into()))?;
    let descr = dict_value(header, "descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or_else(|| bad("no descr".into()))?;
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad("Fortran order is not supported".into()));
    }
    let shape = parse_shape(header).ok_or_else(|| bad("unreadable shape".into()))?;
    Ok(Header { descr: descr.to_string(), shape, data_start })
}

/// The element type (`descr`, e.g. `<f4`) of `.npy` bytes, for files that may hold several.
pub fn element_type(name: &str, bytes: &[u8]) -> Result<String, NpyError> {
    Ok(parse_header(name, bytes)?.descr)
}

/// Parses `.npy` bytes holding elements of type `T`; returns (shape, data).
pub fn from_bytes<T: NpyElement>(name: &str, bytes: &[u8]) -> Result<(Vec<usize>, Vec<T>), NpyError> {
    let bad = |reason: String| NpyError::Format { path: name.to_string(), reason };
    let Header { descr, shape, data_start } = parse_header(name, bytes)?;
    if descr != T::DESCR {
        return Err(bad(format!("element type '{descr}', expected '{}'", T::DESCR)));
    }
    let count =
        shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad("shape overflows".into()))?;
    let size = std::mem::size_of::<T>();
    let payload = &bytes[data_start..];
    if count.checked_mul(size) != Some(payload.len()) {
        return Err(bad(format!("shape {shape:?} needs {count} elements, file holds {} bytes", payload.len())));
    }
    Ok((shape, payload.chunks_exact(size).map(T::read_le).collect()))
}

/// Reads an `.npy` file holding elements of type `T`; returns (shape, data).
pub fn read<T: NpyElement>(path: &Path) -> Result<(Vec<usize>, Vec<T>), NpyError> {
    let file = NpyFile::open(path)?;
    let shape = file.shape.clone();
    Ok((shape, file.data()?))
}

/// An `.npy` file whose header has been read; [`NpyFile::data`] then reads the payload straight
/// into its vector, so a large table (the 77 MB token embeddings) is not held twice at start-up.
pub struct NpyFile {
    name: String,
    file: std::fs::File,
    /// The element type, e.g. `<f4`.
    pub descr: String,
    pub shape: Vec<usize>,
    data_start: u64,
    payload_len: u64,
}

/// An `.npy` payload mapped into memory rather than read ([`NpyFile::map`]).
pub struct NpyMap<T> {
    map: memmap2::Mmap,
    start: usize,
    count: usize,
    element: std::marker::PhantomData<T>,
}

impl<T: NpyElement> NpyMap<T> {
    /// Elements `range` of the payload, `None` past its end.
    pub fn get(&self, range: std::ops::Range<usize>) -> Option<impl Iterator<Item = T> + '_> {
        if range.start > range.end || range.end > self.count {
            return None;
        }
        let size = std::mem::size_of::<T>();
        let bytes = self.map.get(self.start + range.start * size..self.start + range.end * size)?;
        Some(bytes.chunks_exact(size).map(T::read_le))
    }
}

impl NpyFile {
    pub fn open(path: &Path) -> Result<NpyFile, NpyError> {
        let name = path.display().to_string();
        let io = |source| NpyError::Io { path: name.clone(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut head = Vec::with_capacity(PREAMBLE);
        (&mut file).take(PREAMBLE as u64).read_to_end(&mut head).map_err(io)?;
        let (_, data_start) = header_extent(&name, &head)?;
        if (data_start as u64) > len {
            return Err(NpyError::Format { path: name, reason: "header runs past the end of the file".into() });
        }
        let rest = data_start.saturating_sub(head.len()) as u64;
        (&mut file).take(rest).read_to_end(&mut head).map_err(io)?;
        let Header { descr, shape, .. } = parse_header(&name, &head)?;
        Ok(NpyFile { payload_len: len - data_start as u64, data_start: data_start as u64, name, file, descr, shape })
    }

    /// How many `T`s the payload holds, checked against the element type and the shape.
    fn count<T: NpyElement>(&self) -> Result<usize, NpyError> {
        let bad = |reason: String| NpyError::Format { path: self.name.clone(), reason };
        if self.descr != T::DESCR {
            return Err(bad(format!("element type '{}', expected '{}'", self.descr, T::DESCR)));
        }
        let size = std::mem::size_of::<T>();
        let count = self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        count.filter(|c| c.checked_mul(size).is_some_and(|bytes| bytes as u64 == self.payload_len)).ok_or_else(|| {
            bad(format!("shape {:?} does not match the {} bytes the file holds", self.shape, self.payload_len))
        })
    }

    /// The payload mapped, not read: for a large table of which a run reads a few rows (the
    /// token embeddings: a caption's few dozen of 50257), which then cost neither load time nor
    /// resident memory. The file must not change while mapped; a bundle's files never do, they
    /// are replaced whole by a rename, which leaves a mapped file as it was.
    pub fn map<T: NpyElement>(self) -> Result<NpyMap<T>, NpyError> {
        let count = self.count::<T>()?;
        let io = |source| NpyError::Io { path: self.name.clone(), source };
        // SAFETY: the map is read-only, and the file is not modified in place (see above).
        let map = unsafe { memmap2::Mmap::map(&self.file) }.map_err(io)?;
        let start = usize::try_from(self.data_start).expect("the header was read into memory");
        Ok(NpyMap { map, start, count, element: std::marker::PhantomData })
    }

    /// The payload as `T`s (which must be the file's element type).
    pub fn data<T: NpyElement>(mut self) -> Result<Vec<T>, NpyError> {
        let size = std::mem::size_of::<T>();
        let count = self.count::<T>()?;
        let mut data = Vec::with_capacity(count);
        // In chunks of whole elements: the only other copy is this buffer.
        let mut buf = vec![0u8; (1 << 20) / size * size];
        while data.len() < count {
            let len = ((count - data.len()) * size).min(buf.len());
            let chunk = &mut buf[..len];
            self.file.read_exact(chunk).map_err(|source| NpyError::Io { path: self.name.clone(), source })?;
            data.extend(chunk.chunks_exact(size).map(T::read_le));
        }
        Ok(data)
    }
}

fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

fn parse_shape(header: &str) -> Option<Vec<usize>> {
    let v = dict_value(header, "shape")?.strip_prefix('(')?;
    let inner = &v[..v.find(')')?];
    inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.trim_end_matches('L').parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_shapes_and_values() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = to_bytes(&[2, 3, 4], &data);
        assert_eq!(bytes.len() % 64, 24 * 4 % 64);
        let (shape, back) = from_bytes::<f32>("x", &bytes).unwrap();
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(back, data);
        let (shape, back) = from_bytes::<i64>("x", &to_bytes(&[3], &[1i64, -2, 3])).unwrap();
        assert_eq!((shape, back), (vec![3], vec![1, -2, 3]));
        let (shape, _) = from_bytes::<u8>("x", &to_bytes::<u8>(&[], &[7])).unwrap();
        assert!(shape.is_empty());
        let halves = [f16::from_f32(0.5), f16::from_f32(-3.25)];
        let bytes = to_bytes(&[2], &halves);
        assert_eq!(element_type("x", &bytes).unwrap(), "<f2");
        let (shape, back) = from_bytes::<f16>("x", &bytes).unwrap();
        assert_eq!((shape, back), (vec![2], halves.to_vec()));
        let (shape, _) = from_bytes::<u8>("x", &to_bytes::<u8>(&[], &[7])).unwrap();
        assert!(shape.is_empty());
    }

    #[test]
    fn a_mapped_table_reads_the_rows_a_read_one_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.npy");
        let table: Vec<f16> = (0..5 * 7).map(|i| f16::from_f32(i as f32 * 0.25 - 4.0)).collect();
        write(&path, &[5, 7], &table).unwrap();
        let mapped = NpyFile::open(&path).unwrap().map::<f16>().unwrap();
        for row in 0..5 {
            let got: Vec<f16> = mapped.get(row * 7..(row + 1) * 7).unwrap().collect();
            assert_eq!(got, table[row * 7..(row + 1) * 7], "row {row}");
        }
        assert!(mapped.get(28..36).is_none(), "past the end");
        let err = NpyFile::open(&path).unwrap().map::<f32>().err().unwrap().to_string();
        assert!(err.contains("element type"), "{err}");
        // A file cut short is refused when mapped, as when read.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let err = NpyFile::open(&path).unwrap().map::<f16>().err().unwrap().to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn rejects_wrong_type_and_truncation() {
        let bytes = to_bytes(&[4], &[1f32, 2., 3., 4.]);
        let err = from_bytes::<i64>("a.npy", &bytes).unwrap_err().to_string();
        assert!(err.starts_with("a.npy:") && err.contains("element type"), "{err}");
        let err = from_bytes::<f32>("a.npy", &bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert!(err.contains("needs 4 elements"), "{err}");
        assert!(from_bytes::<f32>("a.npy", b"hello").is_err());
    }

    #[test]
    fn files_read_in_chunks_match_the_bytes_and_are_checked_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npy");
        // Over the 1 MiB read buffer, and not a multiple of it.
        let data: Vec<f16> = (0..700_000).map(|i| f16::from_f32((i % 977) as f32 - 400.0)).collect();
        let bytes = to_bytes(&[7, 100_000], &data);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read::<f16>(&path).unwrap(), from_bytes::<f16>("x", &bytes).unwrap());
        let file = NpyFile::open(&path).unwrap();
        assert_eq!((file.descr.as_str(), &file.shape[..]), ("<f2", &[7, 100_000][..]));
        let err = NpyFile::open(&path).unwrap().data::<f32>().unwrap_err().to_string();
        assert!(err.contains("element type '<f2'"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let err = read::<f16>(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()) && err.contains("does not match"), "{err}");
        for short in [&bytes[..5], &bytes[..20]] {
            std::fs::write(&path, short).unwrap();
            let err = read::<f16>(&path).unwrap_err().to_string();
            assert!(err.contains("not a .npy file"), "{err}");
        }
    }
}
