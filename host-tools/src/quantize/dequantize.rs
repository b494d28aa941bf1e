//! The inverse of [`super::rewrite::quantize_model`]: an int8 graph back to an fp32 one whose
//! linear layers compute with the dequantized weights, `(q − zero)·scale`.
//!
//! An fp32 model whose weights are exactly what an int8 bundle holds: how the tests obtain a
//! trained fp32 model from the committed int8 default model (trained models have peaked
//! next-token distributions, which random fixtures lack), to quantize it again and measure.
//! Recognises the forms `quantize` writes: `QuantizeLinear` → `QLinearMatMul` blocks → `Concat`
//! → `DequantizeLinear`, and `QuantizeLinear`/`DynamicQuantizeLinear` → `MatMulInteger` blocks →
//! `Concat` → `Cast` → `Mul` by the per-column scales (→ `Mul` by the dynamic input scale).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::Bundle;
use edgecap_engine::manifest::{FileRole, Precision};
use edgecap_engine::npy::{self, f16};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

/// Writes the fp32 bundle of the int8 bundle `int8` into `out`: every graph dequantized
/// ([`dequantize_model`]), an f16 token-embedding table widened to f32, the rest copied.
pub fn dequantize_bundle(int8: &Path, out: &Path) -> Result<()> {
    let shown = int8.display().to_string();
    let bundle = Bundle::open(int8).with_context(|| format!("cannot open bundle {shown}"))?;
    let mut writer = crate::export::create_writer(out)?;
    let write_err = || format!("{}: cannot write bundle", out.display());
    for entry in &bundle.manifest.files {
        let path = bundle.path(entry.role);
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let bytes = match entry.role {
            FileRole::ImageEncoder | FileRole::Mapper | FileRole::Decoder => {
                let model = pb::ModelProto::decode(bytes.as_slice())
                    .with_context(|| format!("{}: not an ONNX model", path.display()))?;
                dequantize_model(&model)
                    .with_context(|| format!("{}: cannot dequantize", path.display()))?
                    .0
                    .encode_to_vec()
            }
            FileRole::TokenEmbeddings if npy::element_type(&entry.path, &bytes)? == "<f2" => {
                let (shape, table) = npy::from_bytes::<f16>(&entry.path, &bytes)?;
                let wide: Vec<f32> = table.iter().map(|h| h.to_f32()).collect();
                npy::to_bytes(&shape, &wide)
            }
            _ => bytes,
        };
        writer.add(entry.role, &entry.path, &bytes).with_context(write_err)?;
    }
    let mut manifest = bundle.manifest.clone();
    manifest.precision = Precision::Fp32;
    manifest.source = format!("{}; dequantized to fp32 by host-tools", manifest.source);
    writer.finish(manifest)?;
    Ok(())
}

/// The graph with every quantized linear layer a float `MatMul` again; returns how many.
pub fn dequantize_model(model: &pb::ModelProto) -> Result<(pb::ModelProto, usize)> {
    let mut model = model.clone();
    let graph = model.graph.as_mut().context("ONNX model has no graph")?;
    let init: HashMap<String, pb::TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let producer: HashMap<String, usize> =
        graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i))).collect();
    let nodes = graph.node.clone();
    let node_of = |name: &str| producer.get(name).map(|&i| &nodes[i]);
    // The product's blocks: the Concat's inputs, or the one block itself.
    let blocks = |name: &str, op: &str| -> Option<Vec<&pb::NodeProto>> {
        let n = node_of(name)?;
        if n.op_type == op {
            return Some(vec![n]);
        }
        if n.op_type != "Concat" {
            return None;
        }
        n.input.iter().map(|i| node_of(i).filter(|b| b.op_type == op)).collect()
    };
    // The float input of a quantizer's output, and its static scale when it has one.
    let quantizer_input = |xq: &str| -> Option<(String, Option<f32>)> {
        let q = node_of(xq)?;
        match q.op_type.as_str() {
            "QuantizeLinear" => Some((q.input[0].clone(), scalar(init.get(q.input.get(1)?)?))),
            "DynamicQuantizeLinear" => Some((q.input[0].clone(), None)),
            _ => None,
        }
    };

    let mut replacements: Vec<(usize, pb::NodeProto, pb::TensorProto)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let y = match n.output.first() {
            Some(y) => y.clone(),
            None => continue,
        };
        // Static: DequantizeLinear(Concat(QLinearMatMul...)).
        if n.op_type == "DequantizeLinear" {
            let Some(parts) = blocks(&n.input[0], "QLinearMatMul") else { continue };
            let Some((x, _)) = quantizer_input(&parts[0].input[0]) else { continue };
            let mut columns = Vec::new();
            for b in &parts {
                let (q, scale, zero) = (&b.input[3], &b.input[4], &b.input[5]);
                columns.push(dequantize_weight(get(&init, q)?, get(&init, scale)?, Some(get(&init, zero)?), 1.0)?);
            }
            let w = join_columns(&columns, &weight_name(&parts[0].input[3]))?;
            replacements.push((i, matmul(&x, &w.name, &y), w));
            continue;
        }
        // Wide static or dynamic: Mul(Cast(Concat(MatMulInteger...)), scales) [· dynamic scale].
        if n.op_type != "Mul" {
            continue;
        }
        let (cast_out, scales, dynamic) = match node_of(&n.input[0]) {
            Some(c) if c.op_type == "Cast" && init.contains_key(&n.input[1]) => {
                (c.input[0].clone(), n.input[1].clone(), false)
            }
            Some(m) if m.op_type == "Mul" && !init.contains_key(&n.input[1]) => match node_of(&m.input[0]) {
                Some(c) if c.op_type == "Cast" && init.contains_key(&m.input[1]) => {
                    (c.input[0].clone(), m.input[1].clone(), true)
                }
                _ => continue,
            },
            _ => continue,
        };
        let Some(parts) = blocks(&cast_out, "MatMulInteger") else { continue };
        let Some((x, x_scale)) = quantizer_input(&parts[0].input[0]) else { continue };
        // Static wide scales hold weight scale × input scale; dynamic ones the weight's alone.
        let divide = match (dynamic, x_scale) {
            (true, None) => 1.0,
            (false, Some(s)) if s > 0.0 => s,
            _ => continue,
        };
        let scales = f32s(get(&init, &scales)?)?;
        let mut columns = Vec::new();
        let mut c0 = 0;
        for b in &parts {
            let q = get(&init, &b.input[1])?;
            let width = *q.dims.get(1).context("a 2-D int8 weight")? as usize;
            let block_scales = scales.get(c0..c0 + width).context("fewer scales than columns")?;
            let scale = pb::TensorProto {
                dims: vec![width as i64],
                data_type: DataType::Float as i32,
                raw_data: block_scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            };
            let zero = b.input.get(3).map(|z| get(&init, z)).transpose()?;
            columns.push(dequantize_weight(q, &scale, zero, divide)?);
            c0 += width;
        }
        let w = join_columns(&columns, &weight_name(&parts[0].input[1]))?;
        replacements.push((i, matmul(&x, &w.name, &y), w));
    }

    let count = replacements.len();
    for (i, node, w) in replacements {
        graph.node[i] = node;
        graph.initializer.push(w);
    }
    prune(graph);
    Ok((model, count))
}

/// `h.0.mlp.c_fc.weight.int8.0` → `h.0.mlp.c_fc.weight`.
fn weight_name(block: &str) -> String {
    match block.rfind(".int8.") {
        Some(i) => block[..i].to_string(),
        None => format!("{block}.dequantized"),
    }
}

fn matmul(x: &str, w: &str, y: &str) -> pb::NodeProto {
    pb::NodeProto {
        name: y.to_string(),
        op_type: "MatMul".into(),
        input: vec![x.to_string(), w.to_string()],
        output: vec![y.to_string()],
        ..Default::default()
    }
}

fn get<'a>(init: &'a HashMap<String, pb::TensorProto>, name: &str) -> Result<&'a pb::TensorProto> {
    init.get(name).with_context(|| format!("`{name}` is not an initializer"))
}

fn scalar(t: &pb::TensorProto) -> Option<f32> {
    let v = f32s(t).ok()?;
    (v.len() == 1).then(|| v[0])
}

fn f32s(t: &pb::TensorProto) -> Result<Vec<f32>> {
    super::rewrite::f32_values(t)
}

/// One block's [rows, cols] f32 values: `(q − zero[c])·scale[c] / divide` (scale and zero
/// per tensor or per column).
fn dequantize_weight(
    q: &pb::TensorProto,
    scale: &pb::TensorProto,
    zero: Option<&pb::TensorProto>,
    divide: f32,
) -> Result<(usize, usize, Vec<f32>)> {
    let (rows, cols) = match q.dims[..] {
        [r, c] => (r as usize, c as usize),
        _ => bail!("`{}` is not a 2-D weight", q.name),
    };
    let values: Vec<i32> = match DataType::try_from(q.data_type) {
        Ok(DataType::Int8) => q.raw_data.iter().map(|&b| b as i8 as i32).collect(),
        Ok(DataType::Uint8) => q.raw_data.iter().map(|&b| b as i32).collect(),
        _ => bail!("`{}` is not an int8 weight stored raw", q.name),
    };
    if values.len() != rows * cols {
        bail!("`{}` holds {} values for {rows}×{cols}", q.name, values.len());
    }
    let scales = f32s(scale)?;
    let zeros: Vec<i32> = match zero {
        Some(z) => match DataType::try_from(z.data_type) {
            Ok(DataType::Int8) => z.raw_data.iter().map(|&b| b as i8 as i32).collect(),
            Ok(DataType::Uint8) => z.raw_data.iter().map(|&b| b as i32).collect(),
            _ => bail!("`{}` is not an 8-bit zero point", z.name),
        },
        None => vec![0],
    };
    let per = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
    if !(scales.len() == 1 || scales.len() == cols) || !(zeros.len() == 1 || zeros.len() == cols) {
        bail!("`{}`: {} scales and {} zero points for {cols} columns", q.name, scales.len(), zeros.len());
    }
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let z = if zeros.len() == 1 { zeros[0] } else { zeros[c] };
            out.push((values[r * cols + c] - z) as f32 * per(&scales, c) / divide);
        }
    }
    Ok((rows, cols, out))
}

/// Column blocks side by side as one f32 initializer.
fn join_columns(blocks: &[(usize, usize, Vec<f32>)], name: &str) -> Result<pb::TensorProto> {
    let rows = blocks.first().context("no blocks")?.0;
    if blocks.iter().any(|b| b.0 != rows) {
        bail!("`{name}`: blocks of different heights");
    }
    let cols: usize = blocks.iter().map(|b| b.1).sum();
    let mut raw = Vec::with_capacity(rows * cols * 4);
    for r in 0..rows {
        for (_, c, v) in blocks {
            raw.extend(v[r * c..(r + 1) * c].iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    Ok(pb::TensorProto {
        name: name.to_string(),
        dims: vec![rows as i64, cols as i64],
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    })
}

/// Drops the nodes no graph output needs, then the initializers no node reads.
fn prune(graph: &mut pb::GraphProto) {
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, n) in graph.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().cloned());
        }
    }
    let mut k = keep.iter();
    graph.node.retain(|_| *k.next().expect("one flag per node"));
    graph.initializer.retain(|t| needed.contains(&t.name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::calibrate::Range;
    use crate::quantize::rewrite::{quantize_model, RewriteOptions, Scheme};

    /// x [1, 3, 4] → MatMul by w0 [4, 40] → MatMul by w1 [40, 5] (the "lm_head" keeps i32).
    fn two_layers() -> (pb::ModelProto, Vec<f32>, Vec<f32>) {
        let w0: Vec<f32> = (0..160).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let w1: Vec<f32> = (0..200).map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0).collect();
        let t = |name: &str, dims: &[i64], v: &[f32]| pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        };
        let vi = |name: &str| pb::ValueInfoProto { name: name.into(), ..Default::default() };
        let graph = pb::GraphProto {
            node: vec![matmul("x", "w0", "h.matmul"), matmul("h.matmul", "w1", "lm_head.matmul")],
            initializer: vec![t("w0", &[4, 40], &w0), t("w1", &[40, 5], &w1)],
            input: vec![vi("x")],
            output: vec![vi("lm_head.matmul")],
            ..Default::default()
        };
        (pb::ModelProto { graph: Some(graph), ..Default::default() }, w0, w1)
    }

    #[test]
    fn dequantized_weights_are_the_int8_values_times_their_scales() {
        let (fp32, w0, w1) = two_layers();
        let ranges: HashMap<String, Range> = [("x", 3.0), ("h.matmul", 20.0)]
            .into_iter()
            .map(|(n, r)| (n.to_string(), Range { min: -r, max: r }))
            .collect();
        for scheme in [Scheme::Static, Scheme::Dynamic] {
            // Blocks of at most 64 bytes: w0 [4, 40] in three, w1 [40, 5] in five.
            let opts = RewriteOptions { scheme, block_bytes: 64, ..Default::default() };
            let (int8, stats) = quantize_model(&fp32, &ranges, &opts).unwrap();
            assert_eq!(stats.blocks, 3 + 5);
            let (back, count) = dequantize_model(&int8).unwrap();
            assert_eq!(count, 2, "{scheme:?}");
            let g = back.graph.as_ref().unwrap();
            assert_eq!(g.node.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>(), ["MatMul", "MatMul"]);
            assert_eq!(g.node[0].input, ["x", "w0"]);
            assert_eq!(g.node[1].input, ["h.matmul", "w1"]);
            for (name, want, rows) in [("w0", &w0, 4usize), ("w1", &w1, 40)] {
                let t = g.initializer.iter().find(|t| t.name == name).unwrap();
                let got = f32s(t).unwrap();
                let cols = want.len() / rows;
                // Within half a step of each column's symmetric int8 grid.
                for c in 0..cols {
                    let amax = (0..rows).map(|r| want[r * cols + c].abs()).fold(0f32, f32::max);
                    for r in 0..rows {
                        let (a, b) = (got[r * cols + c], want[r * cols + c]);
                        assert!((a - b).abs() <= amax / 127.0 * 0.5001, "{name}[{r},{c}]: {a} vs {b}");
                    }
                }
            }
            assert_eq!(g.initializer.len(), 2, "only the two float weights remain");
        }
    }
}
