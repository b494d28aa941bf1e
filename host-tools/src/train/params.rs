//! Model weights for training: loaded from a checkpoint or initialised from a seed, each either
//! trained (a candle `Var`) or frozen (a plain tensor).
//!
//! Models ask for every weight by its checkpoint name and shape ([`Params::get`]); the store
//! answers from the weights it was given, or initialises, so the same model code starts a new
//! model, continues a pretrained one, or resumes a run. Saving writes the names the exporter
//! reads.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};

use crate::rng::Rng;
use crate::tensor::{self as host, TensorMap};

/// How a weight the checkpoint lacks starts.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// N(0, std²), as transformers' `initializer_range`.
    Normal(f32),
    Zeros,
    Ones,
    Const(f32),
}

pub struct Params {
    device: Device,
    rng: Rng,
    /// Weights to start from, by name; consumed as models ask for them.
    given: TensorMap,
    trained: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
    /// Whether weights created now are trained.
    train_new: bool,
}

impl Params {
    pub fn new(seed: u64, device: Device) -> Params {
        Params {
            device,
            rng: Rng::new(seed),
            given: TensorMap::new(),
            trained: BTreeMap::new(),
            frozen: BTreeMap::new(),
            train_new: true,
        }
    }

    /// Weights to use instead of initialising (names as the model asks for them).
    pub fn with_weights(mut self, weights: TensorMap) -> Params {
        self.given = weights;
        self
    }

    /// Whether weights asked for from now on are trained (true) or frozen.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.train_new = trainable;
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weight `name` of `shape`: given, or initialised with `init`.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        if let Some(v) = self.trained.get(name) {
            return Ok(v.as_tensor().clone());
        }
        if let Some(t) = self.frozen.get(name) {
            return Ok(t.clone());
        }
        let data = match self.given.remove(name) {
            Some(t) if t.shape == shape => t.data,
            Some(t) => bail!("weight `{name}` has shape {:?}, the model needs {shape:?}", t.shape),
            None => self.initial(shape, init),
        };
        let tensor = Tensor::from_vec(data, shape, &self.device)?;
        if self.train_new {
            let var = Var::from_tensor(&tensor)?;
            let t = var.as_tensor().clone();
            self.trained.insert(name.to_string(), var);
            Ok(t)
        } else {
            self.frozen.insert(name.to_string(), tensor.clone());
            Ok(tensor)
        }
    }

    fn initial(&mut self, shape: &[usize], init: Init) -> Vec<f32> {
        let n = shape.iter().product();
        match init {
            Init::Normal(std) => (0..n).map(|_| self.rng.normal() * std).collect(),
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Const(c) => vec![c; n],
        }
    }

    /// Given weights no model asked for: a checkpoint of another shape of model.
    pub fn unused(&self) -> Vec<&str> {
        self.given.names().collect()
    }

    /// The trained weights, by name (sorted: a stable order for the optimiser).
    pub fn trained(&self) -> &BTreeMap<String, Var> {
        &self.trained
    }

    pub fn trained_count(&self) -> usize {
        self.trained.values().map(|v| v.as_tensor().elem_count()).sum()
    }

    /// Every weight (trained and frozen) whose name starts with `prefix`, renamed by `rename`.
    pub fn export(&self, prefix: &str, rename: impl Fn(&str) -> String) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        let all = self.trained.iter().map(|(k, v)| (k, v.as_tensor())).chain(self.frozen.iter());
        for (name, t) in all.filter(|(k, _)| k.starts_with(prefix)) {
            out.insert(rename(name), to_host(t)?);
        }
        Ok(out)
    }
}

/// A candle tensor as the exporter's f32 tensor.
pub fn to_host(t: &Tensor) -> Result<host::Tensor> {
    let data = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    host::Tensor::new(t.dims().to_vec(), data)
}

/// Writes `tensors` as a safetensors file (f32), atomically.
pub fn save_safetensors(path: &Path, tensors: &TensorMap) -> Result<()> {
    save_safetensors_with(path, tensors, None)
}

/// As [`save_safetensors`], with string metadata in the header.
pub fn save_safetensors_with(
    path: &Path,
    tensors: &TensorMap,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| (name.to_string(), t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .context("internal: bad tensor for safetensors")?;
    let out = safetensors::serialize(views, &metadata).context("cannot serialise safetensors")?;
    edgecap_engine::fsutil::write_atomic(path, &out).with_context(|| format!("{}: cannot write", path.display()))
}
