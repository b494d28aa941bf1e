//! Reading weights from the files users have: PyTorch checkpoints and safetensors.
//!
//! * [`read_tensors`] sniffs one file: a torch zip checkpoint (`torch.save`, torch >= 1.6) or a
//!   safetensors file. Legacy (pre-1.6) torch files are recognised and refused with advice.
//! * [`read_hf_dir`] reads a transformers `save_pretrained` directory (single or sharded
//!   safetensors, or `pytorch_model.bin`).
//!
//! Every tensor is converted to f32 ([`Tensor`](crate::tensor::Tensor)); bools become 0/1.
//! Nothing in a checkpoint is ever executed: the torch reader is a restricted unpickler that only
//! knows tensors and plain containers (see [`torch`]).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::tensor::TensorMap;

mod pickle;
pub mod safetensors;
pub mod torch;

pub use self::safetensors::read_safetensors;
pub use self::torch::read_torch;

/// Why a checkpoint could not be read. Each message is one line that starts with the file path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot read: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a PyTorch checkpoint or safetensors file ({detail})", .path.display())]
    UnknownFormat { path: PathBuf, detail: String },
    #[error("{}: legacy (pre-1.6) torch format: re-save it with a recent torch", .path.display())]
    LegacyTorch { path: PathBuf },
    #[error("{}: refusing pickle global {name} (only tensors and plain containers are read)", .path.display())]
    RefusedGlobal { path: PathBuf, name: String },
    #[error("{}: damaged or truncated zip archive: {detail}", .path.display())]
    Zip { path: PathBuf, detail: String },
    #[error("{}: unreadable pickle at byte {offset} of data.pkl: {detail}", .path.display())]
    Pickle { path: PathBuf, offset: usize, detail: String },
    #[error("{}: bad safetensors file: {detail}", .path.display())]
    Safetensors { path: PathBuf, detail: String },
    #[error("{}: {detail}", .path.display())]
    Invalid { path: PathBuf, detail: String },
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn invalid(path: &Path, detail: impl Into<String>) -> CheckpointError {
        CheckpointError::Invalid { path: path.to_path_buf(), detail: one_line(&detail.into()) }
    }
}

/// The file formats [`read_tensors`] tells apart from their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TorchZip,
    Safetensors,
    LegacyTorch,
}

/// Reads every tensor of a torch checkpoint or safetensors file, whichever `path` is.
pub fn read_tensors(path: &Path) -> Result<TensorMap, CheckpointError> {
    match sniff(path)? {
        Format::TorchZip => read_torch(path),
        Format::Safetensors => read_safetensors(path),
        Format::LegacyTorch => Err(CheckpointError::LegacyTorch { path: path.to_path_buf() }),
    }
}

/// Looks at the first bytes (and the length) of `path` to tell its format.
fn sniff(path: &Path) -> Result<Format, CheckpointError> {
    let mut file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let len = file.metadata().map_err(|e| CheckpointError::io(path, e))?.len();
    let mut head = [0u8; 9];
    let n = read_up_to(&mut file, &mut head).map_err(|e| CheckpointError::io(path, e))?;
    let head = &head[..n];
    let unknown = |detail: &str| CheckpointError::UnknownFormat { path: path.to_path_buf(), detail: detail.into() };
    if head.is_empty() {
        return Err(unknown("the file is empty"));
    }
    // Local file header, or the end-of-central-directory record of an empty archive.
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Format::TorchZip);
    }
    if n == 9 && head[8] == b'{' {
        let header_len = u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
        if header_len.checked_add(8).is_some_and(|end| end <= len) {
            return Ok(Format::Safetensors);
        }
    }
    // Pickle protocol 2+ opens with PROTO (0x80): what the pre-zip torch.save wrote first.
    if head[0] == 0x80 {
        return Ok(Format::LegacyTorch);
    }
    Err(unknown("unrecognised first bytes"))
}

/// Fills as much of `buf` as the reader has; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the weights of a transformers `save_pretrained` directory.
///
/// Looks, in order, for `model.safetensors`, `model.safetensors.index.json` (+ shards),
/// `pytorch_model.bin` and `pytorch_model.bin.index.json` (+ shards).
pub fn read_hf_dir(dir: &Path) -> Result<TensorMap, CheckpointError> {
    if !dir.is_dir() {
        return Err(CheckpointError::invalid(dir, "not a directory (expected a transformers save_pretrained folder)"));
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return read_safetensors(&single);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return read_sharded(dir, &index);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return read_tensors(&bin);
    }
    let bin_index = dir.join("pytorch_model.bin.index.json");
    if bin_index.is_file() {
        return read_sharded(dir, &bin_index);
    }
    Err(CheckpointError::invalid(
        dir,
        "no model.safetensors, model.safetensors.index.json or pytorch_model.bin in this directory",
    ))
}

/// Reads the shards an index's `weight_map` names and checks every listed tensor was found.
fn read_sharded(dir: &Path, index: &Path) -> Result<TensorMap, CheckpointError> {
    let text = std::fs::read_to_string(index).map_err(|e| CheckpointError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::invalid(index, format!("invalid JSON: {e}")))?;
    let Some(weight_map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(CheckpointError::invalid(index, "no \"weight_map\" object"));
    };
    let mut shards: Vec<&str> = Vec::new();
    for (name, shard) in weight_map {
        let Some(shard) = shard.as_str() else {
            return Err(CheckpointError::invalid(index, format!("weight_map entry `{name}` is not a file name")));
        };
        // Shards live next to the index; anything else would let the index read arbitrary files.
        if shard.is_empty() || shard.contains(['/', '\\']) || shard == ".." {
            return Err(CheckpointError::invalid(index, format!("shard name `{shard}` is not a plain file name")));
        }
        if !shards.contains(&shard) {
            shards.push(shard);
        }
    }
    let mut all = TensorMap::new();
    for shard in shards {
        let part = read_tensors(&dir.join(shard))?;
        for (name, tensor) in part.iter() {
            all.insert(name, tensor.clone());
        }
    }
    if let Some(missing) = weight_map.keys().find(|name| !all.contains(name)) {
        return Err(CheckpointError::invalid(
            index,
            format!("tensor `{missing}` is listed in weight_map but absent from its shard"),
        ));
    }
    Ok(all)
}

/// Element types found in checkpoints; all are converted to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Converts raw element bytes to f32. `bytes.len()` must be a multiple of [`DType::size`]
    /// (a trailing partial element is ignored).
    pub(crate) fn decode(self, bytes: &[u8], big_endian: bool) -> Vec<f32> {
        macro_rules! conv {
            ($n:literal, $f:expr) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        let mut a = [0u8; $n];
                        a.copy_from_slice(c);
                        if big_endian {
                            a.reverse();
                        }
                        $f(a)
                    })
                    .collect()
            };
        }
        match self {
            DType::F32 => conv!(4, f32::from_le_bytes),
            DType::F64 => conv!(8, |a| f64::from_le_bytes(a) as f32),
            DType::F16 => conv!(2, |a| f16_to_f32(u16::from_le_bytes(a))),
            DType::BF16 => conv!(2, |a| bf16_to_f32(u16::from_le_bytes(a))),
            DType::I64 => conv!(8, |a| i64::from_le_bytes(a) as f32),
            DType::I32 => conv!(4, |a| i32::from_le_bytes(a) as f32),
            DType::I16 => conv!(2, |a| i16::from_le_bytes(a) as f32),
            DType::U64 => conv!(8, |a| u64::from_le_bytes(a) as f32),
            DType::U32 => conv!(4, |a| u32::from_le_bytes(a) as f32),
            DType::U16 => conv!(2, |a| u16::from_le_bytes(a) as f32),
            DType::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
            DType::U8 => bytes.iter().map(|&b| b as f32).collect(),
            DType::Bool => bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
        }
    }
}

/// IEEE binary16 → f32, exact for every input (subnormals, infinities, NaN payloads).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m × 2^-24, exactly representable in f32.
            let magnitude = m as f32 * f32::from_bits(0x3380_0000);
            return f32::from_bits(sign | magnitude.to_bits());
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        // Rebias the exponent from 15 to 127.
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 is the top half of an f32.
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Makes text taken from a file safe for a one-line message: escapes control characters and
/// caps the length.
pub(crate) fn one_line(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_reference_values() {
        let cases: [(u16, f32); 10] = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x0400, 6.103_515_6e-5),
            (0x3555, 0.333_251_95),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ];
        for (h, want) in cases {
            assert_eq!(f16_to_f32(h).to_bits(), want.to_bits(), "f16 bits {h:#06x}");
        }
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8001), -5.960_464_5e-8);
    }

    #[test]
    fn f16_conversion_is_strictly_increasing_over_positive_values() {
        // Every positive finite f16 maps to a strictly larger f32 than the one before it.
        let mut prev = -1.0f32;
        for h in 0u16..0x7c00 {
            let v = f16_to_f32(h);
            assert!(v > prev, "f16 {h:#06x} gave {v}, not above {prev}");
            prev = v;
        }
    }

    #[test]
    fn bf16_and_big_endian_decoding() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc049), -3.140_625);
        assert_eq!(DType::I16.decode(&[0xff, 0xfe], true), vec![-2.0]);
        assert_eq!(DType::I16.decode(&[0xfe, 0xff], false), vec![-2.0]);
        assert_eq!(DType::Bool.decode(&[0, 1, 2], false), vec![0.0, 1.0, 1.0]);
    }

    #[test]
    fn one_line_escapes_newlines_and_caps_length() {
        assert_eq!(one_line("os\nsystem"), "os\\nsystem");
        assert!(one_line(&"x".repeat(1000)).chars().count() <= 201);
    }
}
