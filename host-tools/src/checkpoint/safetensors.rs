//! safetensors files (what transformers' `save_pretrained` writes by default).
//!
//! The `safetensors` crate validates the header (offsets inside the file, sizes matching shapes);
//! this module only converts each tensor to f32.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{one_line, CheckpointError, DType};
use crate::tensor::{Tensor, TensorMap};

/// Reads every tensor of a safetensors file, converted to f32 (bools to 0/1).
pub fn read_safetensors(path: &Path) -> Result<TensorMap, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::io(path, e))?;
    let bad = |detail: String| CheckpointError::Safetensors { path: path.to_path_buf(), detail: one_line(&detail) };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e:?}")))?;
    let mut out = TensorMap::new();
    for (name, view) in file.iter() {
        let dtype = convert_dtype(view.dtype())
            .ok_or_else(|| bad(format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())))?;
        let shape = view.shape().to_vec();
        let data = dtype.decode(view.data(), false);
        let tensor = Tensor::new(shape, data).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        out.insert(name, tensor);
    }
    Ok(out)
}

/// The element types this reader converts; fp8 and anything newer are refused.
fn convert_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::U16 => DType::U16,
        Dtype::U32 => DType::U32,
        Dtype::U64 => DType::U64,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}
