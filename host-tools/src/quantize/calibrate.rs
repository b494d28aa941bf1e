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
    pub ranges: HashMap<String, Range>,
}

impl Calibrator {
    pub fn new(model: &pb::ModelProto, names: Vec<String>, method: Method) -> Result<Calibrator> {
        let mut m = tract_onnx::onnx().model_for_proto_model(model).context("loading the fp32 graph")?;
        m.select_outputs_by_name(&names).context("selecting the tensors to calibrate")?;
        let plan = m.into_optimized().and_then(|m| m.into_runnable()).context("optimising the fp32 graph")?;
        Ok(Calibrator { plan, names, method, ranges: HashMap::new() })
    }

    /// One calibration run.
    pub fn observe(&mut self, inputs: TVec<TValue>) -> Result<()> {
        let outputs = self.plan.run(inputs).context("running the fp32 graph")?;
        for (name, value) in self.names.iter().zip(outputs) {
            let view = value.to_plain_array_view::<f32>()?;
            let values: Vec<f32> = view.iter().copied().collect();
            if let Some(r) = self.method.range_of(&values) {
                let merged = self.ranges.get(name).map_or(r, |old| old.merge(r));
                self.ranges.insert(name.clone(), merged);
            }
        }
        Ok(())
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
}
