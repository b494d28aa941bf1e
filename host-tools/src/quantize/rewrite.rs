//! Rewrites an fp32 ONNX graph into an int8 one, linear layer by linear layer.
//!
//! A "linear site" is a `MatMul` whose second input is a constant 2-D f32 initializer (every
//! `nn.Linear` / GPT-2 `Conv1D` the builders emit; attention's activation×activation products
//! have no constant operand and stay float, as do LayerNorm, softmax, GELU and embeddings).
//!
//! Static scheme, per site: `QuantizeLinear(x)` → one `QLinearMatMul` per column block of the
//! int8 weight → `Concat` → `DequantizeLinear` back to the site's original output name, so the
//! bias `Add` and everything downstream are untouched. Dynamic scheme: `DynamicQuantizeLinear(x)`
//! → `MatMulInteger` per block → `Concat` → `Cast` → per-column and per-row rescale.
//!
//! Why column blocks: tract 0.23.9 pre-computes (packs) a constant only while the folded result
//! stays within `CONST_FOLD_MEM_BUDGET` (4 MiB, `tract-core/src/optim/prop_const.rs`); an int8
//! weight widened to i32 for the kernel is 4× its size, so a weight over 1 MiB would be re-cast
//! on every run. Blocks of at most [`DEFAULT_BLOCK_BYTES`] are packed once at load time.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use super::calibrate::Range;
use crate::onnx::builder::attr_int;

/// Largest int8 weight block: its i32 widening (4×) fits tract's 4 MiB const-fold budget.
pub const DEFAULT_BLOCK_BYTES: usize = 1 << 20;

/// How activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Calibrated per-tensor ranges baked into the graph (`QLinearMatMul`, s8×s8).
    Static,
    /// Ranges measured at run time on each input (`DynamicQuantizeLinear` + `MatMulInteger`).
    Dynamic,
}

/// A float `MatMul` by a constant 2-D weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearSite {
    /// Index of the `MatMul` in `graph.node`.
    pub node: usize,
    pub input: String,
    pub weight: String,
    pub output: String,
}

#[derive(Debug, Clone)]
pub struct RewriteOptions {
    pub scheme: Scheme,
    pub block_bytes: usize,
    /// Sites whose output name starts with one of these stay float (e.g. `lm_head`).
    pub keep_float: Vec<String>,
    /// Static sites whose output starts with one of these keep their i32 accumulators
    /// (`MatMulInteger` + rescale) instead of requantizing the output to int8: the LM head's
    /// logits need finer steps than 256 levels over their range, or near-ties flip the argmax.
    pub wide_output: Vec<String>,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        RewriteOptions {
            scheme: Scheme::Static,
            block_bytes: DEFAULT_BLOCK_BYTES,
            keep_float: Vec::new(),
            wide_output: vec!["lm_head".to_string()],
        }
    }
}

/// What a rewrite did, for the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewriteStats {
    pub sites: usize,
    pub blocks: usize,
    /// MatMuls left in float: attention's activation×activation products and layers kept float.
    pub float_matmuls: usize,
    /// Every quantized site, in graph order.
    pub layers: Vec<SiteReport>,
}

/// What the rewrite did to one linear site.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteReport {
    /// The site's output (the `MatMul`'s, kept by the rewrite).
    pub output: String,
    pub input: String,
    /// The weight's [in, out].
    pub shape: (usize, usize),
    pub blocks: usize,
    /// Static input: (scale, zero point); `None` when measured at run time.
    pub input_qparams: Option<(f32, i8)>,
    /// The output stays in i32 accumulators rescaled to f32 instead of being requantized.
    pub wide_output: bool,
    /// Smallest and largest per-column weight scale.
    pub weight_scales: (f32, f32),
}

impl SiteReport {
    /// The layer's name: the output without the builders' `.matmul` suffix.
    pub fn name(&self) -> &str {
        self.output.strip_suffix(".matmul").unwrap_or(&self.output)
    }
}

/// The linear sites of `model` that `opts` will quantize, in graph order.
pub fn linear_sites(model: &pb::ModelProto, opts: &RewriteOptions) -> Result<Vec<LinearSite>> {
    let graph = model.graph.as_ref().context("ONNX model has no graph")?;
    let weights: HashMap<&str, &pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut sites = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        if n.op_type != "MatMul" || n.input.len() != 2 || n.output.len() != 1 {
            continue;
        }
        let Some(w) = weights.get(n.input[1].as_str()) else { continue };
        // A weight shared with another node stays float: the int8 copy would not replace it.
        if w.data_type != DataType::Float as i32 || w.dims.len() != 2 || uses[n.input[1].as_str()] != 1 {
            continue;
        }
        if opts.keep_float.iter().any(|p| n.output[0].starts_with(p.as_str())) {
            continue;
        }
        sites.push(LinearSite {
            node: i,
            input: n.input[0].clone(),
            weight: n.input[1].clone(),
            output: n.output[0].clone(),
        });
    }
    Ok(sites)
}

/// Per-tensor asymmetric int8 parameters for an activation range (always covering 0, so that
/// zero padding and ReLU zeros are exact).
pub fn activation_qparams(r: Range) -> (f32, i8) {
    let (lo, hi) = (r.min.min(0.0), r.max.max(0.0));
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return (1.0, 0);
    }
    let scale = span / 255.0;
    let zero = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i8;
    (scale, zero)
}

/// Symmetric int8 weights for one block, one scale per column: (values, scales). A per-column
/// scale costs nothing at run time (each output column is rescaled anyway) and keeps a column of
/// small weights from being rounded on the grid of the block's largest.
fn quantize_block(w: &[f32], rows: usize, cols: usize, c0: usize, c1: usize) -> (Vec<i8>, Vec<f32>) {
    let mut amax = vec![0f32; c1 - c0];
    for r in 0..rows {
        for (m, v) in amax.iter_mut().zip(&w[r * cols + c0..r * cols + c1]) {
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 && a.is_finite() { a / 127.0 } else { 1.0 }).collect();
    let mut q = Vec::with_capacity(rows * (c1 - c0));
    for r in 0..rows {
        for (v, s) in w[r * cols + c0..r * cols + c1].iter().zip(&scales) {
            q.push((v / s).round().clamp(-127.0, 127.0) as i8);
        }
    }
    (q, scales)
}

/// Column blocks of a [rows, cols] int8 matrix, each at most `block_bytes`, multiples of 16
/// columns where possible (tract's kernels work on panels of 8/16 columns).
fn column_blocks(rows: usize, cols: usize, block_bytes: usize) -> Vec<(usize, usize)> {
    let mut width = (block_bytes / rows.max(1)).max(1);
    if width >= 16 {
        width -= width % 16;
    }
    let n = cols.div_ceil(width);
    // Even blocks rather than a ragged last one.
    let width = cols.div_ceil(n);
    (0..n).map(|i| (i * width, ((i + 1) * width).min(cols))).filter(|(a, b)| a < b).collect()
}

/// The f32 values of an initializer (raw little-endian or `float_data`).
pub fn f32_values(t: &pb::TensorProto) -> Result<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        bail!("initializer `{}` is not f32", t.name);
    }
    let n: usize = t.dims.iter().map(|&d| d as usize).product();
    let values = if !t.raw_data.is_empty() {
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != n {
        bail!("initializer `{}` holds {} values for shape {:?}", t.name, values.len(), t.dims);
    }
    Ok(values)
}

/// Rewrites every linear site of `model`. Static needs `ranges` for each site's input and output.
pub fn quantize_model(
    model: &pb::ModelProto,
    ranges: &HashMap<String, Range>,
    opts: &RewriteOptions,
) -> Result<(pb::ModelProto, RewriteStats)> {
    let sites = linear_sites(model, opts)?;
    let mut model = model.clone();
    let graph = model.graph.as_mut().context("ONNX model has no graph")?;
    let mut stats = RewriteStats { sites: sites.len(), ..Default::default() };
    stats.float_matmuls = graph.node.iter().filter(|n| n.op_type == "MatMul").count() - sites.len();

    let weights: HashMap<String, pb::TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let by_node: HashMap<usize, &LinearSite> = sites.iter().map(|s| (s.node, s)).collect();
    let replaced: HashSet<&str> = sites.iter().map(|s| s.weight.as_str()).collect();
    graph.initializer.retain(|t| !replaced.contains(t.name.as_str()));

    let mut e = Emitter::default();
    let old_nodes = std::mem::take(&mut graph.node);
    for (i, node) in old_nodes.into_iter().enumerate() {
        let Some(site) = by_node.get(&i) else {
            e.nodes.push(node);
            continue;
        };
        let w = &weights[&site.weight];
        let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
        let values = f32_values(w)?;
        let blocks = column_blocks(rows, cols, opts.block_bytes);
        stats.blocks += blocks.len();
        let wide_output = opts.wide_output.iter().any(|p| site.output.starts_with(p.as_str()));
        let mut report = SiteReport {
            output: site.output.clone(),
            input: site.input.clone(),
            shape: (rows, cols),
            blocks: blocks.len(),
            input_qparams: None,
            wide_output: wide_output || opts.scheme == Scheme::Dynamic,
            weight_scales: (f32::INFINITY, 0.0),
        };
        let scales = match opts.scheme {
            Scheme::Static => {
                let range = |name: &str| {
                    ranges.get(name).copied().with_context(|| format!("no calibration range for `{name}`"))
                };
                let x_range = range(&site.input)?;
                report.input_qparams = Some(activation_qparams(x_range));
                if wide_output {
                    e.static_wide_site(site, &values, (rows, cols), &blocks, x_range)
                } else {
                    e.static_site(site, &values, (rows, cols), &blocks, x_range, range(&site.output)?)
                }
            }
            Scheme::Dynamic => e.dynamic_site(site, &values, (rows, cols), &blocks),
        };
        report.weight_scales = scales.iter().fold(report.weight_scales, |(lo, hi), &s| (lo.min(s), hi.max(s)));
        stats.layers.push(report);
    }
    graph.node = e.nodes;
    graph.initializer.extend(e.initializers);
    Ok((model, stats))
}

/// Accumulates the new nodes and initializers; quantized inputs are shared between the sites
/// that read the same activation (q/k/v projections).
#[derive(Default)]
struct Emitter {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    /// activation name → its quantized value and (scale, zero point) names
    quantized: HashMap<String, [String; 3]>,
}

impl Emitter {
    fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<pb::AttributeProto>) {
        self.nodes.push(pb::NodeProto {
            name: outputs[0].to_string(),
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
    }

    fn tensor(&mut self, name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        });
        name.to_string()
    }

    fn scalar_f32(&mut self, name: &str, v: f32) -> String {
        self.tensor(name, &[], DataType::Float, v.to_le_bytes().to_vec())
    }

    fn scalar_i8(&mut self, name: &str, v: i8) -> String {
        self.tensor(name, &[], DataType::Int8, vec![v as u8])
    }

    fn int8_matrix(&mut self, name: &str, rows: usize, cols: usize, q: Vec<i8>) -> String {
        self.tensor(name, &[rows, cols], DataType::Int8, q.into_iter().map(|v| v as u8).collect())
    }

    fn static_site(
        &mut self,
        site: &LinearSite,
        w: &[f32],
        (rows, cols): (usize, usize),
        blocks: &[(usize, usize)],
        x_range: Range,
        y_range: Range,
    ) -> Vec<f32> {
        let [xq, sx, zx] = self.quantize_static_input(&site.input, x_range);
        let y = &site.output;
        let (scale, zero) = activation_qparams(y_range);
        let sy = self.scalar_f32(&format!("{y}.q_scale"), scale);
        let zy = self.scalar_i8(&format!("{y}.q_zero"), zero);
        let mut parts = Vec::with_capacity(blocks.len());
        let mut col_scales = Vec::with_capacity(cols);
        for (j, &(c0, c1)) in blocks.iter().enumerate() {
            let (q, s) = quantize_block(w, rows, cols, c0, c1);
            let name = format!("{}.int8.{j}", site.weight);
            let wj = self.int8_matrix(&name, rows, c1 - c0, q);
            // Per-column scales: ONNX wants the weight's zero point of the same shape (tract
            // checks their ranks agree).
            let raw = s.iter().flat_map(|v| v.to_le_bytes()).collect();
            let swj = self.tensor(&format!("{name}.scale"), &[c1 - c0], DataType::Float, raw);
            let zw = self.tensor(&format!("{name}.zero"), &[c1 - c0], DataType::Int8, vec![0; c1 - c0]);
            col_scales.extend(s);
            let yj = format!("{y}.int8.{j}");
            self.node("QLinearMatMul", &[&xq, &sx, &zx, &wj, &swj, &zw, &sy, &zy], &[&yj], vec![]);
            parts.push(yj);
        }
        let yq = self.concat(&parts, &format!("{y}.int8"));
        self.node("DequantizeLinear", &[&yq, &sy, &zy], &[y], vec![]);
        col_scales
    }

    /// `QuantizeLinear` of an activation with calibrated parameters, shared between its readers.
    fn quantize_static_input(&mut self, x: &str, x_range: Range) -> [String; 3] {
        if let Some(q) = self.quantized.get(x) {
            return q.clone();
        }
        let (scale, zero) = activation_qparams(x_range);
        let sx = self.scalar_f32(&format!("{x}.q_scale"), scale);
        let zx = self.scalar_i8(&format!("{x}.q_zero"), zero);
        let xq = format!("{x}.quantized");
        self.node("QuantizeLinear", &[x, &sx, &zx], &[&xq], vec![]);
        let q = [xq, sx, zx];
        self.quantized.insert(x.to_string(), q.clone());
        q
    }

    /// Static input, i32 accumulators rescaled to f32 (no output requantization).
    fn static_wide_site(
        &mut self,
        site: &LinearSite,
        w: &[f32],
        (rows, cols): (usize, usize),
        blocks: &[(usize, usize)],
        x_range: Range,
    ) -> Vec<f32> {
        let [xq, _, zx] = self.quantize_static_input(&site.input, x_range);
        let (sx, _) = activation_qparams(x_range);
        let (acc, scales) = self.integer_blocks(site, w, (rows, cols), blocks, &xq, &zx);
        let y = &site.output;
        let accf = format!("{y}.int32_as_f32");
        self.node("Cast", &[&acc], &[&accf], vec![attr_int("to", DataType::Float as i64)]);
        let raw = scales.iter().flat_map(|s| (s * sx).to_le_bytes()).collect();
        let s = self.tensor(&format!("{}.int8.scales", site.weight), &[cols], DataType::Float, raw);
        self.node("Mul", &[&accf, &s], &[y], vec![]);
        scales
    }

    /// `MatMulInteger` per column block, concatenated: the i32 accumulators and each column's
    /// weight scale.
    fn integer_blocks(
        &mut self,
        site: &LinearSite,
        w: &[f32],
        (rows, cols): (usize, usize),
        blocks: &[(usize, usize)],
        xq: &str,
        zx: &str,
    ) -> (String, Vec<f32>) {
        let y = &site.output;
        let zw = self.scalar_i8(&format!("{}.int8.zero", site.weight), 0);
        let mut parts = Vec::with_capacity(blocks.len());
        let mut col_scales = Vec::with_capacity(cols);
        for (j, &(c0, c1)) in blocks.iter().enumerate() {
            let (q, s) = quantize_block(w, rows, cols, c0, c1);
            col_scales.extend(s);
            let wj = self.int8_matrix(&format!("{}.int8.{j}", site.weight), rows, c1 - c0, q);
            let yj = format!("{y}.int32.{j}");
            self.node("MatMulInteger", &[xq, &wj, zx, &zw], &[&yj], vec![]);
            parts.push(yj);
        }
        (self.concat(&parts, &format!("{y}.int32")), col_scales)
    }

    fn dynamic_site(
        &mut self,
        site: &LinearSite,
        w: &[f32],
        (rows, cols): (usize, usize),
        blocks: &[(usize, usize)],
    ) -> Vec<f32> {
        let x = &site.input;
        let [xq, sx, zx] = match self.quantized.get(x) {
            Some(q) => q.clone(),
            None => {
                let q = [format!("{x}.quantized"), format!("{x}.q_scale"), format!("{x}.q_zero")];
                self.node("DynamicQuantizeLinear", &[x], &[&q[0], &q[1], &q[2]], vec![]);
                self.quantized.insert(x.clone(), q.clone());
                q
            }
        };
        let (acc, col_scales) = self.integer_blocks(site, w, (rows, cols), blocks, &xq, &zx);
        let y = &site.output;
        let accf = format!("{y}.int32_as_f32");
        self.node("Cast", &[&acc], &[&accf], vec![attr_int("to", DataType::Float as i64)]);
        let raw = col_scales.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sw = self.tensor(&format!("{}.int8.scales", site.weight), &[cols], DataType::Float, raw);
        let scaled = format!("{y}.weight_scaled");
        self.node("Mul", &[&accf, &sw], &[&scaled], vec![]);
        self.node("Mul", &[&scaled, &sx], &[y], vec![]);
        col_scales
    }

    /// Concatenates blocks along the last axis (a single block is used as is).
    fn concat(&mut self, parts: &[String], name: &str) -> String {
        if parts.len() == 1 {
            return parts[0].clone();
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.node("Concat", &refs, &[name], vec![attr_int("axis", -1)]);
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_columns_under_the_budget() {
        for (rows, cols) in [(768, 3072), (3072, 768), (768, 50257), (4, 10), (512, 3840)] {
            let blocks = column_blocks(rows, cols, DEFAULT_BLOCK_BYTES);
            assert_eq!(blocks[0].0, 0);
            assert_eq!(blocks.last().unwrap().1, cols);
            for w in blocks.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
            assert!(blocks.iter().all(|(a, b)| (b - a) * rows <= DEFAULT_BLOCK_BYTES));
        }
        assert_eq!(column_blocks(4, 10, DEFAULT_BLOCK_BYTES), vec![(0, 10)]);
    }

    #[test]
    fn activation_params_round_trip_the_range_ends() {
        let (s, z) = activation_qparams(Range { min: -1.0, max: 3.0 });
        let deq = |q: i32| (q - z as i32) as f32 * s;
        assert!((deq(-128) + 1.0).abs() <= s);
        assert!((deq(127) - 3.0).abs() <= s);
        assert_eq!(deq(z as i32), 0.0);
        // a positive-only range still represents 0 exactly
        let (s, z) = activation_qparams(Range { min: 0.5, max: 2.0 });
        assert_eq!(z, -128);
        assert!((s - 2.0 / 255.0).abs() < 1e-9);
    }
}
