//! AdamW (decoupled weight decay, as `torch.optim.AdamW`) with a linear warmup then constant
//! learning rate, whose moments can be saved and restored so that a resumed run continues
//! exactly where it stopped.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, Tensor, Var};

use super::params::to_host;
use crate::tensor::TensorMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Gradients are scaled down to this global L2 norm (0 = no clipping).
    pub clip_norm: f64,
    /// After warmup, decay linearly to zero at this step (ClipCap's schedule); `None` keeps the
    /// rate constant, so that a run can be extended by resuming.
    pub decay_to: Option<usize>,
}

impl AdamWConfig {
    pub fn new(lr: f64, warmup_steps: usize) -> AdamWConfig {
        AdamWConfig {
            lr,
            warmup_steps,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_norm: 1.0,
            decay_to: None,
        }
    }

    /// The learning rate of 0-based `step`: linear warmup, then constant or decaying linearly.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay_to {
            Some(end) if end > self.warmup_steps => {
                let left = end.saturating_sub(step) as f64 / (end - self.warmup_steps) as f64;
                self.lr * left.clamp(0.0, 1.0)
            }
            _ => self.lr,
        }
    }
}

pub struct AdamW {
    config: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates done so far.
    pub step: usize,
}

impl AdamW {
    pub fn new(vars: &BTreeMap<String, Var>, config: AdamWConfig) -> Result<AdamW> {
        let vars: Vec<(String, Var)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?;
        let v = vars.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?;
        Ok(AdamW { config, vars, m, v, step: 0 })
    }

    /// One update from the gradients of `loss`; returns the gradient norm before clipping.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<f64> {
        let grads = loss.backward()?;
        let norm = self.grad_norm(&grads)?;
        let clip = if self.config.clip_norm > 0.0 && norm > self.config.clip_norm {
            self.config.clip_norm / norm
        } else {
            1.0
        };
        let c = self.config;
        let lr = c.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Detached: a gradient remembers the ops that made it, and moments built on it
            // would chain every past step's graph (memory grew by the model's size per step).
            let g = (g.detach() * clip)?;
            self.m[i] = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let m_hat = (&self.m[i] / bias1)?;
            let v_hat = (&self.v[i] / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?.detach())?;
        }
        Ok(norm)
    }

    fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                sum += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        Ok(sum.sqrt())
    }

    /// The moments, named `adam.m.<weight>` / `adam.v.<weight>`.
    pub fn state(&self) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), to_host(&self.m[i])?);
            out.insert(format!("adam.v.{name}"), to_host(&self.v[i])?);
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state`] after `step` updates.
    pub fn restore(&mut self, state: &TensorMap, step: usize) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adam.{kind}.{name}");
                let t = state.get(&key)?;
                if t.shape != var.as_tensor().dims() {
                    bail!("optimiser state `{key}` has shape {:?}, the weight {:?}", t.shape, var.as_tensor().dims());
                }
                *slot = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), var.as_tensor().device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_holds_or_decays() {
        let mut c = AdamWConfig::new(1.0, 4);
        assert_eq!([c.lr_at(0), c.lr_at(3), c.lr_at(10)], [0.25, 1.0, 1.0]);
        c.decay_to = Some(14);
        assert_eq!([c.lr_at(4), c.lr_at(9), c.lr_at(14), c.lr_at(20)], [1.0, 0.5, 0.0, 0.0]);
    }
}
