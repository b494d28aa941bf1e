//! The building blocks the models share: candle's differentiable primitives, and for layer norm,
//! softmax, bias adds and quick GELU the fused kernels of `edgecap-train-kernels` (candle's own
//! fused kernels have no backward pass; composed from primitives they took 40% of a step).

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use edgecap_train_kernels as kernels;

use super::params::{Init, Params};

/// `nn.Linear`: weight [out, in] (torch layout), optional bias.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: &mut Params, name: &str, (inputs, outputs): (usize, usize), bias: bool, std: f32) -> Result<Self> {
        let weight = p.get(&format!("{name}.weight"), &[outputs, inputs], Init::Normal(std))?;
        let bias = if bias { Some(p.get(&format!("{name}.bias"), &[outputs], Init::Zeros)?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = matmul_2d(x, &self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => add_bias(&y, b)?,
            None => y,
        })
    }
}

/// GPT-2's `Conv1D`: a linear layer stored as weight [in, out].
pub struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    pub fn new(p: &mut Params, name: &str, (inputs, outputs): (usize, usize), std: f32) -> Result<Self> {
        let weight = p.get(&format!("{name}.weight"), &[inputs, outputs], Init::Normal(std))?;
        let bias = p.get(&format!("{name}.bias"), &[outputs], Init::Zeros)?;
        Ok(Conv1D { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        add_bias(&matmul_2d(x, &self.weight)?, &self.bias)
    }
}

/// `x` [.., K] × `w` [K, N] as one 2-D matmul over the flattened leading dims. A broadcast
/// batched matmul would run one small GEMM per batch row, and its backward pass would sum the
/// weight's gradient over a broadcast axis (candle's slow strided reduction): 3× slower steps.
pub fn matmul_2d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims.last().copied().unwrap_or(1);
    let rows = x.elem_count() / k.max(1);
    let y = x.reshape((rows, k))?.matmul(w)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(1)?;
    }
    Ok(y.reshape(out)?)
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn new(p: &mut Params, name: &str, dim: usize, eps: f32) -> Result<Self> {
        let weight = p.get(&format!("{name}.weight"), &[dim], Init::Ones)?;
        let bias = p.get(&format!("{name}.bias"), &[dim], Init::Zeros)?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(kernels::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// Scaled dot-product attention over [B, H, S, hd] heads; `bias` [S, T] is added to the scores.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let hd = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
    let scores = match bias {
        Some(b) => scores.broadcast_add(b)?,
        None => scores,
    };
    Ok(softmax(&scores)?.matmul(v)?)
}

/// [B, S, H·hd] → [B, H, S, hd].
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    Ok(x.reshape((b, s, heads, d / heads))?.transpose(1, 2)?.contiguous()?)
}

/// [B, H, S, hd] → [B, S, H·hd].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, s, hd) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, s, h * hd))?)
}

/// The causal mask as an additive bias [S, S]: 0 on and below the diagonal, a large negative
/// number above (not -inf: a fully masked row must not turn gradients into NaN).
pub fn causal_bias(seq: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..seq * seq).map(|i| if i % seq > i / seq { -1e9 } else { 0.0 }).collect();
    Ok(Tensor::from_vec(data, (seq, seq), device)?)
}

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(kernels::softmax(x)?)
}

pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    Ok(kernels::log_softmax(x)?)
}

/// `x` plus `bias` broadcast over the leading dims (a layer's bias; a position embedding over
/// the batch): the kernel sums the bias gradient in one pass.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(kernels::add_bias(x, bias)?)
}

/// GPT-2's `gelu_new` (tanh approximation).
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu()?)
}

/// CLIP's `quick_gelu`: x·σ(1.702x).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok(kernels::quick_gelu(x)?)
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// Mean cross-entropy of `logits` [N, V] against `targets` [N] (u32), skipping `ignore` targets,
/// with label smoothing `smoothing` (as torch's `CrossEntropyLoss(label_smoothing=…)`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore: Option<u32>, smoothing: f64) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let per_row = if smoothing > 0.0 {
        let uniform = logp.mean(D::Minus1)?.neg()?;
        ((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?
    } else {
        nll
    };
    match ignore {
        Some(ignored) => {
            let keep = targets.ne(ignored)?.to_dtype(DType::F32)?;
            let count = keep.sum_all()?.to_scalar::<f32>()?.max(1.0);
            Ok((per_row.mul(&keep)?.sum_all()? / f64::from(count))?)
        }
        None => Ok(per_row.mean_all()?),
    }
}
