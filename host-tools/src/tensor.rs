//! Host-side tensors: what the checkpoint readers produce and the graph writers consume.
//!
//! Everything the exporter touches is converted to f32 on read; the checkpoints it reads are small
//! enough (hundreds of MB) that a plain `Vec<f32>` beats a generic dtype-tagged tensor for clarity.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// A dense, row-major f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("tensor of shape {shape:?} needs {n} values, got {}", data.len());
        }
        Ok(Tensor { shape, data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The transpose of a 2-D tensor (PyTorch `Linear` stores [out, in]; ONNX `MatMul` wants [in, out]).
    pub fn transposed(&self) -> Result<Tensor> {
        let [rows, cols] = self.shape[..] else {
            bail!("transpose needs a 2-D tensor, got shape {:?}", self.shape);
        };
        let mut data = vec![0f32; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Ok(Tensor { shape: vec![cols, rows], data })
    }
}

/// Named tensors, ordered by name. Names follow the layout of the file they came from.
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    tensors: BTreeMap<String, Tensor>,
}

impl TensorMap {
    pub fn new() -> TensorMap {
        TensorMap::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| format!("missing tensor `{name}`"))
    }

    /// The tensor called `name`, checked against the shape the architecture requires.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            bail!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape);
        }
        Ok(t)
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// The tensors whose names start with `prefix`, renamed without it.
    pub fn strip_prefix(&self, prefix: &str) -> TensorMap {
        let tensors = self
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect();
        TensorMap { tensors }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl FromIterator<(String, Tensor)> for TensorMap {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        TensorMap { tensors: iter.into_iter().collect() }
    }
}
