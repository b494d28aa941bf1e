//! Activation ranges for static quantization: the fp32 graph is run by tract on calibration
//! inputs with every linear site's input and output added to the graph outputs.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// The observed range of one activation tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    fn merge(self, other: Range) -> Range {
        Range { min: self.min.min(other.min), max: self.max.max(other.max) }
    }
}

/// How a tensor's values become a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The smallest and largest value seen.
    MinMax,
    /// The `p` and `100 − p` percentiles of each run's values (e.g. 99.99), widened over runs:
    /// rare outliers no longer stretch the scale for every other value.
    Percentile(f32),
}

impl Method {
    /// The range of one run's values (`None` when there are none or none is finite).
    pub fn range_of(self, values: &[f32]) -> Option<Range> {
        let mut finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        match self {
            Method::MinMax => {
                let min = finite.iter().copied().fold(f32::INFINITY, f32::min);
                let max = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                Some(Range { min, max })
            }
            Method::Percentile(p) => {
                let n = finite.len();
                let hi_rank = (((p as f64) / 100.0 * (n - 1) as f64).round() as usize).min(n - 1);
                let lo_rank = n - 1 - hi_rank;
                let (_, &mut hi, _) = finite.select_nth_unstable_by(hi_rank, f32::total_cmp);
                let (_, &mut lo, _) = finite.select_nth_unstable_by(lo_rank, f32::total_cmp);
                Some(Range { min: lo, max: hi })
            }
        }
    }
}

/// Runs one fp32 graph and records the ranges of the named tensors.
pub struct Calibrator {
    plan: std::sync::Arc<TypedRunnableModel>,
    names: Vec<String>,
    method: Method,
    /// A decoder: each input is decoded as the engine does (see [`Calibrator::decoder`]).
    decoder_prefix: Option<usize>,
    /// Tensors whose per-channel (last axis) largest magnitudes are recorded too.
    channel_names: std::collections::HashSet<String>,
    pub ranges: HashMap<String, Range>,
    /// max |x| of every channel of the last axis, over every position and run.
    pub channel_absmax: HashMap<String, Vec<f32>>,
}

impl Calibrator {
    pub fn new(model: &pb::ModelProto, names: Vec<String>, method: Method) -> Result<Calibrator> {
        Self::build(model, names, method, None)
    }

    /// A calibrator for a bundle's decoder graph, whose inputs are a whole teacher-forced
    /// sequence (`inputs_embeds` [1, T, D], positions, bias, an empty `past`): it runs them as
    /// the engine decodes, the first `prefix` positions in one call, then one position per call
    /// on the growing cache. The graph computes its LM head on each call's last position only,
    /// so one call over the whole sequence would show the head a single position per image.
    pub fn decoder(model: &pb::ModelProto, names: Vec<String>, method: Method, prefix: usize) -> Result<Calibrator> {
        Self::build(model, names, method, Some(prefix.max(1)))
    }

    fn build(model: &pb::ModelProto, names: Vec<String>, method: Method, prefix: Option<usize>) -> Result<Calibrator> {
        let mut m = tract_onnx::onnx().model_for_proto_model(model).context("loading the fp32 graph")?;
        let mut outputs = names.clone();
        if prefix.is_some() {
            outputs.push(PRESENT.to_string());
        }
        m.select_outputs_by_name(&outputs).context("selecting the tensors to calibrate")?;
        let plan = m.into_optimized().and_then(|m| m.into_runnable()).context("optimising the fp32 graph")?;
        Ok(Calibrator {
            plan,
            names,
            method,
            decoder_prefix: prefix,
            channel_names: Default::default(),
            ranges: HashMap::new(),
            channel_absmax: HashMap::new(),
        })
    }

    /// Also records the per-channel largest magnitudes of `names` (a subset of the calibrated
    /// tensors).
    pub fn with_channels(mut self, names: impl IntoIterator<Item = String>) -> Calibrator {
        self.channel_names.extend(names);
        self
    }

    /// One calibration run: one image's input (a decoder's, decoded call by call). Percentile
    /// ranges are taken over all of the run's values.
    pub fn observe(&mut self, inputs: TVec<TValue>) -> Result<()> {
        let n = self.names.len();
        let calls = match self.decoder_prefix {
            None => vec![self.plan.run(inputs).context("running the fp32 graph")?],
            Some(prefix) => self.decode(inputs, prefix)?,
        };
        for (i, name) in self.names.iter().enumerate() {
            let mut values: Vec<f32> = Vec::new();
            let mut channels = None;
            for outputs in &calls {
                let view = outputs[i].to_plain_array_view::<f32>()?;
                channels.get_or_insert(view.shape().last().copied().unwrap_or(1).max(1));
                values.extend(view.iter().copied());
            }
            if let Some(r) = self.method.range_of(&values) {
                let merged = self.ranges.get(name).map_or(r, |old| old.merge(r));
                self.ranges.insert(name.clone(), merged);
            }
            if let (true, Some(channels)) = (self.channel_names.contains(name), channels) {
                let amax = self.channel_absmax.entry(name.clone()).or_insert_with(|| vec![0.0; channels]);
                if amax.len() != channels {
                    anyhow::bail!("`{name}` has {channels} channels in one run and {} in another", amax.len());
                }
                merge_channel_absmax(amax, &values);
            }
        }
        debug_assert!(calls.iter().all(|c| c.len() == n + usize::from(self.decoder_prefix.is_some())));
        Ok(())
    }

    /// The decoder's calls for one teacher-forced sequence; each call's outputs end with `present`.
    fn decode(&self, inputs: TVec<TValue>, prefix: usize) -> Result<Vec<TVec<TValue>>> {
        let [embeds, _, _, past] = &inputs[..] else {
            anyhow::bail!("a decoder takes 4 inputs, not {}", inputs.len());
        };
        let total = *embeds.shape().get(1).context("inputs_embeds is [batch, positions, hidden]")?;
        let mut past = past.clone();
        let mut calls = Vec::new();
        let mut start = 0;
        while start < total {
            let len = if start == 0 { prefix.min(total) } else { 1 };
            let e = embeds.slice(1, start, start + len)?;
            let positions: Vec<i64> = (start as i64..(start + len) as i64).collect();
            let bias = edgecap_engine::model::causal_bias(len, start);
            let outputs = self
                .plan
                .run(tvec!(
                    e.into_tvalue(),
                    Tensor::from_shape(&[len], &positions)?.into_tvalue(),
                    Tensor::from_shape(&[len, start + len], &bias)?.into_tvalue(),
                    past,
                ))
                .with_context(|| format!("running the fp32 decoder at position {start}"))?;
            past = outputs.last().context("the decoder's present")?.clone();
            calls.push(outputs);
            start += len;
        }
        Ok(calls)
    }
}

/// The decoder graph's output holding the grown KV cache.
const PRESENT: &str = "present";

/// `amax[c] = max(amax[c], |v|)` over the rows of `values` laid out [.., channels]; non-finite
/// values are skipped.
pub fn merge_channel_absmax(amax: &mut [f32], values: &[f32]) {
    for row in values.chunks_exact(amax.len()) {
        for (m, &v) in amax.iter_mut().zip(row) {
            if v.is_finite() {
                *m = m.max(v.abs());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_ignores_rare_outliers() {
        let mut v: Vec<f32> = (0..100_000).map(|i| (i % 100) as f32 / 100.0).collect();
        v[5] = 1000.0;
        v[6] = -1000.0;
        let r = Method::Percentile(99.99).range_of(&v).unwrap();
        assert!(r.max < 1.0 && r.min >= 0.0, "{r:?}");
        let r = Method::MinMax.range_of(&v).unwrap();
        assert_eq!((r.min, r.max), (-1000.0, 1000.0));
        assert_eq!(Method::MinMax.range_of(&[f32::NAN]), None);
    }

    #[test]
    fn channel_absmax_is_per_last_axis() {
        let mut amax = vec![0.0; 3];
        merge_channel_absmax(&mut amax, &[1.0, -5.0, 0.5, -2.0, 4.0, f32::NAN]);
        assert_eq!(amax, [2.0, 5.0, 0.5]);
        merge_channel_absmax(&mut amax, &[0.0, 0.0, -7.0]);
        assert_eq!(amax, [2.0, 5.0, 7.0]);
    }
}
