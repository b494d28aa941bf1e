//! Activation smoothing (SmoothQuant, Xiao et al. 2023) folded into the LayerNorms.
//!
//! Trained transformers' LayerNorm outputs carry a few channels tens of times larger than the
//! rest, so one per-tensor int8 range sized for those channels leaves the others a few levels.
//! For a LayerNorm whose output only linear layers read, `y = LN(x)·γ + β` then `y·W`, dividing
//! channel `j` of γ and β by `s_j` and multiplying row `j` of every reader's `W` by `s_j` computes
//! the same function; with `s_j = max|y_j|^α / max|W_j|^(1−α)` the channels' ranges come
//! together, the weights taking part of the spread. The division is folded into the graph's γ
//! and β initializers, so it costs nothing at run time. Readers of one LayerNorm (q, k and v)
//! share one `s`, since they share one quantized input.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use super::rewrite::{f32_values, LinearSite};

/// SmoothQuant's migration strength: the share of each channel's range moved into the weights.
pub const DEFAULT_ALPHA: f32 = 0.5;

/// A LayerNormalization whose output only linear sites read.
#[derive(Debug, Clone, PartialEq)]
pub struct NormGroup {
    /// The LayerNormalization node's name.
    pub norm: String,
    /// Its output, the readers' input.
    pub activation: String,
    pub gamma: String,
    pub beta: Option<String>,
    /// The readers' weight initializers ([in, out]).
    pub weights: Vec<String>,
}

/// What smoothing did to one LayerNorm's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothed {
    pub norm: String,
    pub alpha: f32,
    /// Smallest and largest `s_j` (normalised so that the median channel's is 1).
    pub factor_range: (f32, f32),
    /// The largest channel's max |y| over the median channel's, before and after.
    pub spread_before: f32,
    pub spread_after: f32,
}

/// Why a linear site's input was left as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum NotSmoothed {
    /// The input comes from another operator (GELU, attention, a mapper's Tanh, a graph input).
    NotLayerNorm(String),
    /// A LayerNorm, but folding is not possible; the reason.
    Unfoldable(String),
}

impl std::fmt::Display for NotSmoothed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSmoothed::NotLayerNorm(op) => write!(f, "input from {op}, not a LayerNorm"),
            NotSmoothed::Unfoldable(why) => write!(f, "LayerNorm not folded: {why}"),
        }
    }
}

/// The LayerNorms whose outputs can be smoothed, and for every other site input why not.
pub fn norm_groups(
    model: &pb::ModelProto,
    sites: &[LinearSite],
) -> Result<(Vec<NormGroup>, HashMap<String, NotSmoothed>)> {
    let graph = model.graph.as_ref().context("ONNX model has no graph")?;
    let initializers: HashMap<&str, &pb::TensorProto> =
        graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let producers: HashMap<&str, &pb::NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let graph_outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();

    let mut groups: Vec<NormGroup> = Vec::new();
    let mut skipped = HashMap::new();
    let mut inputs: Vec<&str> = sites.iter().map(|s| s.input.as_str()).collect();
    inputs.dedup();
    let mut seen = std::collections::HashSet::new();
    for x in inputs {
        if !seen.insert(x) {
            continue;
        }
        let readers: Vec<&LinearSite> = sites.iter().filter(|s| s.input == x).collect();
        let Some(node) = producers.get(x) else {
            skipped.insert(x.to_string(), NotSmoothed::NotLayerNorm("a graph input".into()));
            continue;
        };
        if node.op_type != "LayerNormalization" {
            skipped.insert(x.to_string(), NotSmoothed::NotLayerNorm(node.op_type.clone()));
            continue;
        }
        let unfoldable = |why: String| NotSmoothed::Unfoldable(why);
        let why = (|| -> std::result::Result<NormGroup, String> {
            if node.output.first().map(String::as_str) != Some(x) {
                return Err("the linear layers read a statistic, not the normalised output".into());
            }
            if node.output.iter().skip(1).any(|o| !o.is_empty() && uses.contains_key(o.as_str())) {
                return Err("its mean or inverse deviation is read too".into());
            }
            let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(-1, |a| a.i);
            if axis != -1 {
                return Err(format!("normalises axis {axis}, not the last"));
            }
            if graph_outputs.contains(&x) {
                return Err("its output is a graph output".into());
            }
            let readers_count = uses.get(x).copied().unwrap_or(0);
            if readers_count != readers.len() {
                return Err(format!(
                    "its output is read by {} other operator(s) besides {} linear layer(s)",
                    readers_count - readers.len().min(readers_count),
                    readers.len()
                ));
            }
            let param = |i: usize| -> std::result::Result<Option<String>, String> {
                let Some(name) = node.input.get(i).filter(|n| !n.is_empty()) else { return Ok(None) };
                let t = initializers.get(name.as_str()).ok_or(format!("`{name}` is not an initializer"))?;
                if t.data_type != DataType::Float as i32 || t.dims.len() != 1 {
                    return Err(format!("`{name}` is not a 1-D f32 tensor"));
                }
                if uses.get(name.as_str()).copied() != Some(1) {
                    return Err(format!("`{name}` is shared with another node"));
                }
                Ok(Some(name.clone()))
            };
            let gamma = param(1)?.ok_or("no scale initializer")?;
            let beta = param(2)?;
            Ok(NormGroup {
                norm: node.name.clone(),
                activation: x.to_string(),
                gamma,
                beta,
                weights: readers.iter().map(|s| s.weight.clone()).collect(),
            })
        })();
        match why {
            Ok(group) => groups.push(group),
            Err(why) => {
                skipped.insert(x.to_string(), unfoldable(why));
            }
        }
    }
    Ok((groups, skipped))
}

/// `s_j = x_j^α / w_j^(1−α)`, normalised so that the median channel's factor is 1; a channel
/// with no activation or no weight keeps 1.
pub fn smoothing_factors(x_absmax: &[f32], w_absmax: &[f32], alpha: f32) -> Vec<f32> {
    let mut s: Vec<f32> = x_absmax
        .iter()
        .zip(w_absmax)
        .map(|(&x, &w)| {
            let v = (x as f64).powf(alpha as f64) / (w as f64).powf(1.0 - alpha as f64);
            if x > 0.0 && w > 0.0 && v.is_finite() && v > 0.0 {
                v as f32
            } else {
                f32::NAN
            }
        })
        .collect();
    let mut valid: Vec<f32> = s.iter().copied().filter(|v| v.is_finite()).collect();
    if valid.is_empty() {
        return vec![1.0; x_absmax.len()];
    }
    valid.sort_by(f32::total_cmp);
    let median = valid[valid.len() / 2];
    for v in &mut s {
        *v = if v.is_finite() { (*v / median).clamp(1e-4, 1e4) } else { 1.0 };
    }
    s
}

/// The ratio of the largest to the median of `absmax`.
pub fn spread(absmax: &[f32]) -> f32 {
    let mut v = absmax.to_vec();
    v.sort_by(f32::total_cmp);
    let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
    let max = v.last().copied().unwrap_or(0.0);
    if median > 0.0 {
        max / median
    } else {
        f32::INFINITY
    }
}

/// Smooths every group of `model` in place, given each group activation's per-channel max |y|
/// on the calibration inputs.
pub fn smooth(
    model: &mut pb::ModelProto,
    groups: &[NormGroup],
    channel_absmax: &HashMap<String, Vec<f32>>,
    alpha: f32,
) -> Result<Vec<Smoothed>> {
    let graph = model.graph.as_mut().context("ONNX model has no graph")?;
    let index: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut done = Vec::with_capacity(groups.len());
    for g in groups {
        let x = channel_absmax
            .get(&g.activation)
            .with_context(|| format!("no per-channel calibration of `{}`", g.activation))?;
        let channels = x.len();
        // The readers' largest weight in each input row.
        let mut w_absmax = vec![0f32; channels];
        for name in &g.weights {
            let t = &graph.initializer[index[name]];
            let (rows, cols) = matrix_dims(t)?;
            if rows != channels {
                bail!("`{name}` has {rows} rows for {channels} channels of `{}`", g.activation);
            }
            for (r, row) in f32_values(t)?.chunks_exact(cols).enumerate() {
                w_absmax[r] = row.iter().fold(w_absmax[r], |m, v| m.max(v.abs()));
            }
        }
        let s = smoothing_factors(x, &w_absmax, alpha);
        for name in std::iter::once(&g.gamma).chain(&g.beta) {
            let t = &mut graph.initializer[index[name]];
            let mut v = f32_values(t)?;
            if v.len() != channels {
                bail!("`{name}` has {} values for {channels} channels", v.len());
            }
            v.iter_mut().zip(&s).for_each(|(v, s)| *v /= s);
            set_f32_values(t, &v);
        }
        for name in &g.weights {
            let t = &mut graph.initializer[index[name]];
            let (_, cols) = matrix_dims(t)?;
            let mut v = f32_values(t)?;
            for (row, s) in v.chunks_exact_mut(cols).zip(&s) {
                row.iter_mut().for_each(|w| *w *= s);
            }
            set_f32_values(t, &v);
        }
        let after: Vec<f32> = x.iter().zip(&s).map(|(x, s)| x / s).collect();
        let lo = s.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        done.push(Smoothed {
            norm: g.norm.clone(),
            alpha,
            factor_range: (lo, hi),
            spread_before: spread(x),
            spread_after: spread(&after),
        });
    }
    Ok(done)
}

fn matrix_dims(t: &pb::TensorProto) -> Result<(usize, usize)> {
    match t.dims[..] {
        [r, c] => Ok((r as usize, c as usize)),
        _ => bail!("`{}` is not a matrix", t.name),
    }
}

fn set_f32_values(t: &mut pb::TensorProto, v: &[f32]) {
    t.float_data.clear();
    t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::{Dim, Elem, GraphBuilder};
    use crate::quantize::calibrate::{Calibrator, Method};
    use crate::quantize::rewrite::{linear_sites, RewriteOptions};
    use crate::rng::Rng;
    use crate::tensor::{Tensor, TensorMap};
    use tract_onnx::prelude::*;

    const D: usize = 8;

    /// x → LayerNorm `ln` (γ ×40 in channels 2 and 5) → q, k, v; x → LayerNorm `ln2` → `fc`
    /// and a residual Add; GELU(fc) → `proj`. Outputs q, k, v and the sum.
    fn graph() -> pb::ModelProto {
        let mut rng = Rng::new(7);
        let mut w = TensorMap::new();
        let mut t = |name: &str, shape: &[usize], scale: f32| {
            let n = shape.iter().product();
            let data = (0..n).map(|_| (rng.uniform() - 0.5) * scale).collect();
            w.insert(name, Tensor::new(shape.to_vec(), data).unwrap());
        };
        for ln in ["ln", "ln2"] {
            t(&format!("{ln}.weight"), &[D], 2.0);
            t(&format!("{ln}.bias"), &[D], 0.4);
        }
        for l in ["q", "k", "v", "fc", "proj"] {
            t(&format!("{l}.weight"), &[D, D], 1.0);
            t(&format!("{l}.bias"), &[D], 0.1);
        }
        for c in [2, 5] {
            for p in ["ln.weight", "ln.bias"] {
                let mut v = w.remove(p).unwrap();
                v.data[c] *= 40.0;
                w.insert(p, v);
            }
        }
        let mut g = GraphBuilder::new("smooth_test");
        let x = g.input("x", Elem::F32, &[1.into(), Dim::sym("seq"), D.into()]).unwrap();
        let h = g.layer_norm(&x, &w, "ln", D, 1e-5).unwrap();
        let mut outs = Vec::new();
        for l in ["q", "k", "v"] {
            outs.push(g.linear(&h, &w, l, (D, D), true).unwrap());
        }
        let h2 = g.layer_norm(&x, &w, "ln2", D, 1e-5).unwrap();
        let f = g.linear(&h2, &w, "fc", (D, D), true).unwrap();
        let f = g.gelu_tanh(&f, "act");
        let f = g.linear(&f, &w, "proj", (D, D), true).unwrap();
        let r = g.add(&f, &h2, "residual");
        for (o, name) in outs.iter().zip(["q_out", "k_out", "v_out"]).chain([(&r, "r_out")]) {
            g.output(o, name, Elem::F32, &[1.into(), Dim::sym("seq"), D.into()]).unwrap();
        }
        g.finish()
    }

    fn input(seed: u64) -> TVec<TValue> {
        let mut rng = Rng::new(seed);
        let v: Vec<f32> = (0..6 * D).map(|_| (rng.uniform() - 0.5) * 4.0).collect();
        tvec!(tract_ndarray::Array3::from_shape_vec((1, 6, D), v).unwrap().into_tensor().into_tvalue())
    }

    fn run(model: &pb::ModelProto, inputs: TVec<TValue>) -> Vec<Vec<f32>> {
        let plan =
            tract_onnx::onnx().model_for_proto_model(model).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        plan.run(inputs)
            .unwrap()
            .iter()
            .map(|v| v.to_plain_array_view::<f32>().unwrap().iter().copied().collect())
            .collect()
    }

    #[test]
    fn only_layer_norms_read_by_linear_layers_alone_are_smoothed_and_the_function_stays() {
        let model = graph();
        let sites = linear_sites(&model, &RewriteOptions::default()).unwrap();
        let (groups, skipped) = norm_groups(&model, &sites).unwrap();
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(groups[0].gamma, "ln.weight");
        assert_eq!(groups[0].beta.as_deref(), Some("ln.bias"));
        assert_eq!(groups[0].weights, ["q.weight", "k.weight", "v.weight"]);
        match &skipped["ln2"] {
            NotSmoothed::Unfoldable(why) => assert!(why.contains("1 other operator"), "{why}"),
            other => panic!("{other:?}"),
        }
        let gelu_out = sites.iter().find(|s| s.weight == "proj.weight").unwrap();
        assert_eq!(skipped[&gelu_out.input], NotSmoothed::NotLayerNorm("Mul".into()));

        let names = vec![groups[0].activation.clone()];
        let mut c = Calibrator::new(&model, names.clone(), Method::MinMax).unwrap().with_channels(names);
        for seed in 0..4 {
            c.observe(input(seed)).unwrap();
        }
        let amax = &c.channel_absmax["ln"];
        let mut smoothed = model.clone();
        let done = smooth(&mut smoothed, &groups, &c.channel_absmax, 0.5).unwrap();
        assert_eq!(done.len(), 1);
        assert!(done[0].spread_before > 10.0, "{done:?}");
        assert!(done[0].spread_after < done[0].spread_before / 3.0, "{done:?}");
        assert!((done[0].spread_before - spread(amax)).abs() < 1e-6);

        // The same function, to float rounding.
        for seed in 10..13 {
            let (a, b) = (run(&model, input(seed)), run(&smoothed, input(seed)));
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
        // And the smoothed LayerNorm's channels are what the factors say: γ/s, β/s.
        let gamma = |m: &pb::ModelProto| {
            f32_values(m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == "ln.weight").unwrap()).unwrap()
        };
        let (g0, g1) = (gamma(&model), gamma(&smoothed));
        let ratios: Vec<f32> = g0.iter().zip(&g1).map(|(a, b)| a / b).collect();
        let (lo, hi) = done[0].factor_range;
        assert!(ratios.iter().all(|r| *r >= lo * 0.9999 && *r <= hi * 1.0001), "{ratios:?} vs {lo}..{hi}");
        assert!(ratios[2] > 3.0 * ratios[0] && ratios[5] > 3.0 * ratios[0], "{ratios:?}");
    }

    #[test]
    fn factors_follow_the_formula_and_the_median_channel_keeps_one() {
        let x = [1.0, 2.0, 40.0, 1.0, 0.0];
        let w = [0.5, 0.5, 0.0125, 2.0, 1.0];
        let s = smoothing_factors(&x, &w, 0.5);
        // raw: √(x/w) = √2, 2, √3200, √0.5; median of the four valid ones (sorted √0.5, √2, 2,
        // √3200) is 2; the dead channel keeps 1.
        let want = [2f32.sqrt() / 2.0, 1.0, 3200f32.sqrt() / 2.0, 0.5f32.sqrt() / 2.0, 1.0];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-5 * b, "{s:?} vs {want:?}");
        }
        // α = 1 moves the whole range into the weights: x/s is the same in every channel.
        let s = smoothing_factors(&x[..4], &w[..4], 1.0);
        let after: Vec<f32> = x[..4].iter().zip(&s).map(|(x, s)| x / s).collect();
        assert!(after.iter().all(|v| (v - after[0]).abs() < 1e-5), "{after:?}");
        assert_eq!(spread(&[1.0, 2.0, 40.0]), 20.0);
    }
}
