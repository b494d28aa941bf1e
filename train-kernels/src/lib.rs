//! Fused CPU kernels, each with its own backward pass, for the small transformers host-tools
//! trains with candle.
//!
//! Why: candle 0.9's fused layer-norm and softmax kernels have no backward pass, so training code
//! composes them from primitives (a mean, a subtraction, a square, another mean, a division, ...),
//! each a pass over memory and a temporary, and candle's backward of a broadcast add sums the
//! gradient over the broadcast axes with a slow strided reduction. On the default model's recipe
//! (widths 96 / 64, 26 tokens) two thirds of a training step went to such element-wise passes and
//! reductions rather than to matrix products. Each kernel here is one pass forward and one pass
//! backward over contiguous rows.
//!
//! A separate crate so the workspace can optimise it in the dev profile, as it does for the
//! dependencies: host-tools itself builds at opt-level 0, where these loops would be slower than
//! the primitives they replace.
//!
//! Every op is f32 on the CPU, and reads its inputs as contiguous rows along the last dimension
//! (the wrappers make them contiguous). [`composed`] holds the same functions written with
//! candle's differentiable primitives: the reference the tests compare values and gradients
//! against, and the baseline of `examples/kernel_bench.rs`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Error, Layout, Result, Shape, Tensor};

pub mod composed;

/// Layer normalisation over the last dimension, with a scale and a shift of that dimension's size.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNorm { eps })
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { log: false })
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { log: true })
}

/// `x + bias`, where `bias`'s shape is the trailing dimensions of `x`'s (a linear layer's bias,
/// a position embedding added to every batch item). Its gradient is summed over the leading ones.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (xd, bd) = (x.dims(), bias.dims());
    if bd.len() > xd.len() || xd[xd.len() - bd.len()..] != *bd {
        return Err(Error::Msg(format!("add_bias: bias {bd:?} is not the trailing dims of {xd:?}")).bt());
    }
    x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
}

/// CLIP's `quick_gelu`: x·σ(1.702x).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(QuickGelu)
}

/// The f32 elements of a contiguous tensor's storage.
fn rows<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        return Err(Error::Msg(format!("{op}: f32 tensors only")).bt());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(Error::Msg(format!("{op}: the input must be contiguous")).bt()),
    }
}

/// The size of the last dimension (1 for a scalar), checked to be non-zero.
fn last_dim(op: &str, layout: &Layout) -> Result<usize> {
    let d = layout.dims().last().copied().unwrap_or(1);
    if d == 0 {
        return Err(Error::Msg(format!("{op}: empty last dimension")).bt());
    }
    Ok(d)
}

fn check_len(op: &str, what: &str, data: &[f32], want: usize) -> Result<()> {
    if data.len() != want {
        return Err(Error::Msg(format!("{op}: {what} has {} elements, expected {want}", data.len())).bt());
    }
    Ok(())
}

/// Mean and 1/σ of one row (σ² the biased variance, as torch's LayerNorm).
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "edgecap-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, w, b) = (rows(op, s1, l1)?, rows(op, s2, l2)?, rows(op, s3, l3)?);
        let d = last_dim(op, l1)?;
        check_len(op, "weight", w, d)?;
        check_len(op, "bias", b, d)?;
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let (mean, rstd) = moments(xr, self.eps);
            for i in 0..d {
                yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One pass gives all three gradients, packed as rows [dx rows..., dw, db]. The row means
        // and 1/σ are recomputed from x there: a custom op cannot keep them from the forward pass,
        // and recomputing is one more read of x against a saved tensor per layer norm.
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let (rows, d) = packed.dims2()?;
        let dx = packed.narrow(0, 0, rows - 2)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows - 2, 1)?.reshape(d)?;
        let db = packed.narrow(0, rows - 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Layer norm's backward: with x̂ = (x − μ)/σ and ĝ = g·w,
/// dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ, dw = Σ g·x̂, db = Σ g (sums over rows).
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "edgecap-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, w, g) = (rows(op, s1, l1)?, rows(op, s2, l2)?, rows(op, s3, l3)?);
        let d = last_dim(op, l1)?;
        check_len(op, "weight", w, d)?;
        check_len(op, "gradient", g, x.len())?;
        let n = x.len() / d;
        let mut out = vec![0f32; x.len() + 2 * d];
        let (dx, sums) = out.split_at_mut(x.len());
        // The weight and bias gradients sum thousands of rows: accumulate in f64.
        let (mut dw, mut db) = (vec![0f64; d], vec![0f64; d]);
        let mut xhat = vec![0f32; d];
        for r in 0..n {
            let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let (mean, rstd) = moments(xr, self.eps);
            let (mut sum_g, mut sum_gx) = (0f32, 0f32);
            for i in 0..d {
                xhat[i] = (xr[i] - mean) * rstd;
                let gh = gr[i] * w[i];
                sum_g += gh;
                sum_gx += gh * xhat[i];
                dw[i] += f64::from(gr[i] * xhat[i]);
                db[i] += f64::from(gr[i]);
            }
            let (mean_g, mean_gx) = (sum_g / d as f32, sum_gx / d as f32);
            let dxr = &mut dx[r * d..(r + 1) * d];
            for i in 0..d {
                dxr[i] = (gr[i] * w[i] - mean_g - xhat[i] * mean_gx) * rstd;
            }
        }
        for i in 0..d {
            sums[i] = dw[i] as f32;
            sums[d + i] = db[i] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((n + 2, d))))
    }
}

struct Softmax {
    log: bool,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        if self.log {
            "edgecap-log-softmax"
        } else {
            "edgecap-softmax"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(self.name(), storage, layout)?;
        let d = last_dim(self.name(), layout)?;
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (yv, xv) in yr.iter_mut().zip(xr) {
                *yv = (xv - max).exp();
                sum += *yv;
            }
            if self.log {
                let lse = sum.ln();
                for (yv, xv) in yr.iter_mut().zip(xr) {
                    *yv = xv - max - lse;
                }
            } else {
                yr.iter_mut().for_each(|v| *v /= sum);
            }
        }
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { log: self.log })?))
    }
}

/// From the output y and its gradient g, over each row: softmax dx = y·(g − Σ g·y);
/// log-softmax dx = g − e^y·Σ g.
struct SoftmaxGrad {
    log: bool,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "edgecap-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (y, g) = (rows(op, s1, l1)?, rows(op, s2, l2)?);
        let d = last_dim(op, l1)?;
        check_len(op, "gradient", g, y.len())?;
        let mut dx = vec![0f32; y.len()];
        for ((yr, gr), dr) in y.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            if self.log {
                let sum: f32 = gr.iter().sum();
                for i in 0..d {
                    dr[i] = gr[i] - yr[i].exp() * sum;
                }
            } else {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for i in 0..d {
                    dr[i] = yr[i] * (gr[i] - dot);
                }
            }
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "edgecap-bias-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, b) = (rows(op, s1, l1)?, rows(op, s2, l2)?);
        if b.is_empty() || x.len() % b.len() != 0 {
            return Err(Error::Msg(format!("{op}: {} elements do not tile by a bias of {}", x.len(), b.len())).bt());
        }
        let mut y = x.to_vec();
        for yr in y.chunks_exact_mut(b.len()) {
            yr.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, bias: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad.contiguous()?.apply_op2_no_bwd(bias, &SumRows)?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// The gradient summed over rows the length of the second argument, shaped like it.
struct SumRows;

impl CustomOp2 for SumRows {
    fn name(&self) -> &'static str {
        "edgecap-sum-rows"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (g, like) = (rows(op, s1, l1)?, rows(op, s2, l2)?);
        let width = like.len();
        if width == 0 || g.len() % width != 0 {
            return Err(Error::Msg(format!("{op}: {} elements do not tile by {width}", g.len())).bt());
        }
        let mut sum = vec![0f64; width];
        for gr in g.chunks_exact(width) {
            sum.iter_mut().zip(gr).for_each(|(s, v)| *s += f64::from(*v));
        }
        Ok((CpuStorage::F32(sum.into_iter().map(|v| v as f32).collect()), l2.shape().clone()))
    }
}

const QUICK_GELU: f32 = 1.702;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "edgecap-quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(self.name(), storage, layout)?;
        let y = x.iter().map(|&v| v * sigmoid(QUICK_GELU * v)).collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &QuickGeluGrad)?))
    }
}

/// d/dx x·σ(ax) = σ(ax) + a·x·σ(ax)·(1 − σ(ax)).
struct QuickGeluGrad;

impl CustomOp2 for QuickGeluGrad {
    fn name(&self) -> &'static str {
        "edgecap-quick-gelu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, g) = (rows(op, s1, l1)?, rows(op, s2, l2)?);
        check_len(op, "gradient", g, x.len())?;
        let dx = x
            .iter()
            .zip(g)
            .map(|(&v, &gv)| {
                let s = sigmoid(QUICK_GELU * v);
                gv * (s + QUICK_GELU * v * s * (1.0 - s))
            })
            .collect();
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
