//! Per-layer SQNR: which linear layer lost precision.
//!
//! Both bundles' graphs run on the same inputs, the ones `quantize` calibrates on: each image's
//! pixels, the fp32 image embedding, and the fp32 prefix followed by the fp32 greedy caption,
//! decoded as the engine decodes (the prefix in one call, then one token per call on the cache),
//! so that the LM head, computed on each call's last position only, sees every position. For
//! every linear layer that the int8 graph quantized, the output of its product (before the bias)
//! is compared two ways:
//!
//! * **isolated**: the int8 product fed the fp32 graph's input to it, so the number is the layer's
//!   own loss (input quantization, int8 weights, output requantization). Where `quantize`
//!   smoothed the input (a LayerNorm whose γ and β differ between the graphs), the int8 graph's
//!   LayerNorm is fed the fp32 LayerNorm's input instead, which gives the smoothed value exactly;
//! * **in pipeline**: the int8 graph run as it is, every earlier layer's error included.
//!
//! SQNR = 10·log10(Σ‖y‖² / Σ‖y − y₈‖²) pooled over every image and position.
//!
//! The three (fp32, isolated int8, int8) run as one ONNX graph: the two int8 copies' tensors
//! renamed under `iso/` and `pipe/`, the isolated copy's quantizers wired to the fp32 tensors. One
//! plan per graph then serves every image and decoding step with tract's symbolic shapes.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::Bundle;
use edgecap_engine::manifest::FileRole;
use edgecap_engine::model::CaptionModel;
use prost::Message;
use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::SQNR_CAP_DB;
use crate::images::Sample;
use crate::quantize::calibration_inputs;
use crate::quantize::rewrite::{linear_sites, RewriteOptions};

#[derive(Debug, Clone, Serialize)]
pub struct LayerSqnr {
    pub graph: String,
    pub layer: String,
    pub isolated_db: f64,
    pub pipeline_db: f64,
}

const GRAPHS: [FileRole; 3] = [FileRole::ImageEncoder, FileRole::Mapper, FileRole::Decoder];
const ISO: &str = "iso/";
const PIPE: &str = "pipe/";
/// The decoder's cache input and output (the bundle's decoder I/O).
const PAST: &str = "past";
const PRESENT: &str = "present";

/// Every quantized linear layer of the three graphs, worst isolated SQNR first.
pub fn layer_sqnr(fp32: &CaptionModel, samples: &[Sample], bundles: (&Bundle, &Bundle)) -> Result<Vec<LayerSqnr>> {
    let inputs: Vec<Vec<TVec<TValue>>> = samples
        .iter()
        .map(|s| calibration_inputs(fp32, &s.image).with_context(|| format!("{}: fp32 run failed", s.path.display())))
        .collect::<Result<_>>()?;
    let mut all = Vec::new();
    for (g, role) in GRAPHS.iter().enumerate() {
        let read = |b: &Bundle| -> Result<pb::ModelProto> {
            let path = b.path(*role);
            let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            pb::ModelProto::decode(bytes.as_slice()).with_context(|| format!("{}: not an ONNX model", path.display()))
        };
        let (a, b) = (read(bundles.0)?, read(bundles.1)?);
        let file = bundles.1.manifest.file(*role).map(|f| f.path.clone()).unwrap_or_default();
        let graph_inputs: Vec<TVec<TValue>> = inputs.iter().map(|per_graph| per_graph[g].clone()).collect();
        let prefix = (*role == FileRole::Decoder).then_some(fp32.dims().prefix_length);
        let layers = graph_sqnr(&a, &b, &graph_inputs, prefix).with_context(|| format!("per-layer SQNR of {file}"))?;
        all.extend(layers.into_iter().map(|(layer, isolated_db, pipeline_db)| LayerSqnr {
            graph: file.clone(),
            layer,
            isolated_db,
            pipeline_db,
        }));
    }
    all.sort_by(|x, y| x.isolated_db.total_cmp(&y.isolated_db));
    Ok(all)
}

/// (layer, isolated dB, pipeline dB) for every quantized linear layer of one graph, in graph
/// order. `decoder_prefix`: the graph is a bundle's decoder, each input a whole teacher-forced
/// sequence, decoded call by call.
pub fn graph_sqnr(
    fp32: &pb::ModelProto,
    int8: &pb::ModelProto,
    inputs: &[TVec<TValue>],
    decoder_prefix: Option<usize>,
) -> Result<Vec<(String, f64, f64)>> {
    let all = RewriteOptions { keep_float: Vec::new(), ..Default::default() };
    let g8 = int8.graph.as_ref().context("ONNX model has no graph")?;
    let producers8: HashMap<&str, &pb::NodeProto> =
        g8.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    // Quantized: the product's output is no longer a float MatMul's.
    let sites: Vec<_> = linear_sites(fp32, &all)?
        .into_iter()
        .filter(|s| producers8.get(s.output.as_str()).is_some_and(|n| n.op_type != "MatMul"))
        .collect();
    if sites.is_empty() {
        return Ok(Vec::new());
    }
    let layer_inputs: Vec<String> = sites.iter().map(|s| s.input.clone()).collect();
    let combined = combine(fp32, int8, &layer_inputs, decoder_prefix.is_some())?;
    let n = sites.len();
    let mut outputs: Vec<String> = Vec::with_capacity(3 * n + 2);
    for prefix in ["", ISO, PIPE] {
        outputs.extend(sites.iter().map(|s| format!("{prefix}{}", s.output)));
    }
    if decoder_prefix.is_some() {
        outputs.extend([PRESENT.to_string(), format!("{PIPE}{PRESENT}")]);
    }
    let mut m = tract_onnx::onnx().model_for_proto_model(&combined).context("loading the compared graphs")?;
    m.select_outputs_by_name(&outputs).context("selecting the layers' outputs")?;
    let plan = m.into_optimized().and_then(|m| m.into_runnable()).context("optimising the compared graphs")?;

    let (mut signal, mut noise_iso, mut noise_pipe) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
    let mut add = |values: &TVec<TValue>| -> Result<()> {
        for i in 0..n {
            let y = values[i].to_plain_array_view::<f32>()?;
            let (a, b) = (values[n + i].to_plain_array_view::<f32>()?, values[2 * n + i].to_plain_array_view::<f32>()?);
            signal[i] += y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            noise_iso[i] += y.iter().zip(a.iter()).map(|(&v, &w)| (v as f64 - w as f64).powi(2)).sum::<f64>();
            noise_pipe[i] += y.iter().zip(b.iter()).map(|(&v, &w)| (v as f64 - w as f64).powi(2)).sum::<f64>();
        }
        Ok(())
    };
    for graph_inputs in inputs {
        match decoder_prefix {
            None => add(&plan.run(graph_inputs.clone()).context("running the compared graphs")?)?,
            Some(prefix) => decode(&plan, graph_inputs, prefix, 3 * n, &mut add)?,
        }
    }
    let db = |s: f64, n: f64| if n == 0.0 { SQNR_CAP_DB } else { (10.0 * (s / n).log10()).min(SQNR_CAP_DB) };
    Ok(sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.output.strip_suffix(".matmul").unwrap_or(&s.output).to_string();
            (name, db(signal[i], noise_iso[i]), db(signal[i], noise_pipe[i]))
        })
        .collect())
}

/// Runs one teacher-forced sequence through the combined decoder as the engine decodes it: the
/// prefix, then one position per call, the fp32 and the pipeline copies each on their own cache
/// (the isolated copy's products read fp32 values only, so it shares the fp32 cache).
fn decode(
    plan: &std::sync::Arc<TypedRunnableModel>,
    inputs: &TVec<TValue>,
    prefix: usize,
    present_at: usize,
    add: &mut impl FnMut(&TVec<TValue>) -> Result<()>,
) -> Result<()> {
    let [embeds, _, _, past] = &inputs[..] else {
        bail!("a decoder takes 4 inputs, not {}", inputs.len());
    };
    let total = *embeds.shape().get(1).context("inputs_embeds is [batch, positions, hidden]")?;
    let (mut past32, mut past8) = (past.clone(), past.clone());
    let mut start = 0;
    while start < total {
        let len = if start == 0 { prefix.clamp(1, total) } else { 1 };
        let positions: Vec<i64> = (start as i64..(start + len) as i64).collect();
        let bias = edgecap_engine::model::causal_bias(len, start);
        let outputs = plan
            .run(tvec!(
                embeds.slice(1, start, start + len)?.into_tvalue(),
                Tensor::from_shape(&[len], &positions)?.into_tvalue(),
                Tensor::from_shape(&[len, start + len], &bias)?.into_tvalue(),
                past32,
                past8,
            ))
            .with_context(|| format!("running the compared decoders at position {start}"))?;
        add(&outputs)?;
        past32 = outputs[present_at].clone();
        past8 = outputs[present_at + 1].clone();
        start += len;
    }
    Ok(())
}

/// One graph holding the fp32 graph as it is, and the int8 graph twice: under `iso/`, every
/// quantized layer's input fed from the fp32 graph, and under `pipe/` as it is (a decoder's
/// `pipe/` copy with its own cache input `pipe/past`, appended to the inputs).
///
/// A layer input whose producer is the same in both graphs (same operator, inputs and constants)
/// is fed as it is to the quantizers that read it; one whose producer differs (a LayerNorm whose
/// γ and β were smoothed) is recomputed by the int8 graph's own producer from the fp32 values of
/// the producer's inputs.
fn combine(
    fp32: &pb::ModelProto,
    int8: &pb::ModelProto,
    layer_inputs: &[String],
    decoder: bool,
) -> Result<pb::ModelProto> {
    let g32 = fp32.graph.as_ref().context("ONNX model has no graph")?;
    let g8 = int8.graph.as_ref().context("ONNX model has no graph")?;
    let init32: HashMap<&str, &pb::TensorProto> = g32.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let init8: HashMap<&str, &pb::TensorProto> = g8.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let produced32: HashMap<&str, &pb::NodeProto> =
        g32.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let graph_inputs: HashSet<&str> = g8.input.iter().map(|i| i.name.as_str()).collect();
    let same_constant = |a: &str| match (init8.get(a), init32.get(a)) {
        (Some(t8), Some(t32)) => t8.raw_data == t32.raw_data && t8.float_data == t32.float_data && t8.dims == t32.dims,
        (None, None) => true,
        _ => false,
    };

    // The isolated copy: (node index in g8, input slot) → the fp32 tensor it reads instead.
    let mut fed: HashMap<(usize, usize), String> = HashMap::new();
    let wanted: HashSet<&str> = layer_inputs.iter().map(String::as_str).collect();
    for x in wanted {
        if graph_inputs.contains(x) {
            continue;
        }
        let producer8 = g8.node.iter().position(|n| n.output.iter().any(|o| o == x));
        let same_producer = match (producer8, produced32.get(x)) {
            (Some(p), Some(n32)) => {
                let n8 = &g8.node[p];
                n8.op_type == n32.op_type
                    && n8.attribute == n32.attribute
                    && n8.input == n32.input
                    && n8.input.iter().all(|i| same_constant(i))
            }
            _ => false,
        };
        if same_producer {
            for (i, n) in g8.node.iter().enumerate() {
                let quantizer = matches!(n.op_type.as_str(), "QuantizeLinear" | "DynamicQuantizeLinear");
                if quantizer && n.input.first().is_some_and(|i| i == x) {
                    fed.insert((i, 0), x.to_string());
                }
            }
            continue;
        }
        let p = producer8.with_context(|| format!("`{x}`: no producer in the int8 graph"))?;
        for (slot, input) in g8.node[p].input.iter().enumerate() {
            if input.is_empty() || init8.contains_key(input.as_str()) || graph_inputs.contains(input.as_str()) {
                continue;
            }
            if !produced32.contains_key(input.as_str()) {
                bail!("`{x}`: its producer's input `{input}` is not in the fp32 graph");
            }
            fed.insert((p, slot), input.clone());
        }
    }

    let mut model = fp32.clone();
    let out = model.graph.as_mut().context("ONNX model has no graph")?;
    let rename = |prefix: &str, name: &str, shared: &dyn Fn(&str) -> bool| {
        if name.is_empty() || shared(name) {
            name.to_string()
        } else {
            format!("{prefix}{name}")
        }
    };
    let shared_iso = |name: &str| graph_inputs.contains(name);
    let shared_pipe = |name: &str| graph_inputs.contains(name) && !(decoder && name == PAST);
    for (prefix, shared) in [(ISO, &shared_iso as &dyn Fn(&str) -> bool), (PIPE, &shared_pipe)] {
        for (i, n) in g8.node.iter().enumerate() {
            let mut node = n.clone();
            if !n.name.is_empty() {
                node.name = format!("{prefix}{}", n.name);
            }
            for (slot, input) in node.input.iter_mut().enumerate() {
                *input = match fed.get(&(i, slot)).filter(|_| prefix == ISO) {
                    Some(fp32_name) => fp32_name.clone(),
                    None => rename(prefix, input, shared),
                };
            }
            for o in node.output.iter_mut() {
                *o = rename(prefix, o, shared);
            }
            out.node.push(node);
        }
        for t in &g8.initializer {
            let mut t = t.clone();
            t.name = format!("{prefix}{}", t.name);
            out.initializer.push(t);
        }
    }
    if decoder {
        let past = g8.input.iter().find(|i| i.name == PAST).context("a decoder without a `past` input")?;
        out.input.push(pb::ValueInfoProto { name: format!("{PIPE}{PAST}"), ..past.clone() });
    }
    Ok(model)
}
