//! A small ONNX graph builder and the layers the three model files share.
//!
//! Values are plain `String` names, as in ONNX itself. Every node gets a fresh, readable name
//! derived from a hint (`layers.3.attn.q`), so tract's error messages point at the layer that
//! failed. The model files call the layer helpers (`linear`, `layer_norm`, `attention`, the
//! activations) and read much like the PyTorch modules they mirror.
//!
//! Only opset-17 standard operators are emitted (no `Gelu`, which is opset 20, and no contrib ops),
//! so the graphs are valid ONNX as well as loadable by tract 0.23.9.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgecap_engine::fsutil::write_atomic;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};

use crate::tensor::{Tensor, TensorMap};

/// The ONNX operator set the graphs are written against (the first with `LayerNormalization`).
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// Written into `ModelProto.producer_name`.
pub const PRODUCER: &str = "edgecap host-tools";

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// A `dim_param`: a symbol (`batch`) or an expression of symbols (`past+seq`).
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

/// Element types of graph inputs and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    I64,
}

impl Elem {
    fn data_type(self) -> DataType {
        match self {
            Elem::F32 => DataType::Float,
            Elem::I64 => DataType::Int64,
        }
    }
}

/// An ONNX node attribute.
pub fn attr_int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.to_string(), r#type: AttributeType::Int as i32, i: value, ..Default::default() }
}

pub fn attr_ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.to_string(), r#type: AttributeType::Float as i32, f: value, ..Default::default() }
}

/// Builds one `GraphProto`, then wraps it in a `ModelProto` with [`GraphBuilder::finish`].
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    used: HashSet<String>,
    /// Small constants are shared: one initializer per distinct value.
    f32_scalars: HashMap<u32, String>,
    i64_consts: HashMap<(Vec<i64>, usize), String>,
}

impl GraphBuilder {
    pub fn new(graph_name: &str) -> GraphBuilder {
        GraphBuilder { name: graph_name.to_string(), ..Default::default() }
    }

    /// A value name not used yet: `hint` itself, else `hint.1`, `hint.2`, ...
    pub fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut n = 0;
        while self.used.contains(&name) {
            n += 1;
            name = format!("{hint}.{n}");
        }
        self.used.insert(name.clone());
        name
    }

    /// Declares a graph input; returns its name (which is kept exactly).
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> Result<String> {
        if !self.used.insert(name.to_string()) {
            bail!("graph input name `{name}` is already used");
        }
        self.inputs.push(value_info(name, elem, dims));
        Ok(name.to_string())
    }

    /// Declares `value` as a graph output called `name` (an `Identity` renames it if needed).
    pub fn output(&mut self, value: &str, name: &str, elem: Elem, dims: &[Dim]) -> Result<()> {
        if value != name {
            if self.used.contains(name) {
                bail!("graph output name `{name}` is already used");
            }
            self.used.insert(name.to_string());
            self.nodes.push(pb::NodeProto {
                name: name.to_string(),
                op_type: "Identity".to_string(),
                input: vec![value.to_string()],
                output: vec![name.to_string()],
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, elem, dims));
        Ok(())
    }

    /// Adds a weight as an f32 initializer (little-endian `raw_data`).
    pub fn initializer(&mut self, hint: &str, t: &Tensor) -> String {
        let name = self.fresh(hint);
        let raw_data = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: t.shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data,
            ..Default::default()
        });
        name
    }

    /// A 1-D i64 constant (shapes, axes, indices), shared between all users of the same value.
    pub fn const_i64(&mut self, values: &[i64]) -> String {
        self.i64_initializer(values, &[values.len() as i64])
    }

    /// A rank-0 i64 constant (a `Gather` index that drops the axis).
    pub fn scalar_i64(&mut self, value: i64) -> String {
        self.i64_initializer(&[value], &[])
    }

    fn i64_initializer(&mut self, values: &[i64], dims: &[i64]) -> String {
        // Keyed by rank too: the scalar 1 and the 1-D [1] are different constants.
        let key = (values.to_vec(), dims.len());
        if let Some(name) = self.i64_consts.get(&key) {
            return name.clone();
        }
        let hint = format!("const_i64_{}", values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("_"));
        let name = self.fresh(&hint);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: DataType::Int64 as i32,
            int64_data: values.to_vec(),
            ..Default::default()
        });
        self.i64_consts.insert(key, name.clone());
        name
    }

    /// A rank-0 f32 constant, shared between all users of the same value.
    pub fn scalar_f32(&mut self, value: f32) -> String {
        if let Some(name) = self.f32_scalars.get(&value.to_bits()) {
            return name.clone();
        }
        let name = self.fresh(&format!("const_f32_{value}"));
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: vec![],
            data_type: DataType::Float as i32,
            float_data: vec![value],
            ..Default::default()
        });
        self.f32_scalars.insert(value.to_bits(), name.clone());
        name
    }

    /// Adds a single-output node; returns the name of its output (fresh, from `hint`).
    pub fn node(&mut self, op: &str, hint: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        self.node_multi(op, hint, inputs, 1, attrs).remove(0)
    }

    /// Adds a node with `n_outputs` outputs named `hint.0`, `hint.1`, ...
    pub fn node_multi(
        &mut self,
        op: &str,
        hint: &str,
        inputs: &[&str],
        n_outputs: usize,
        attrs: Vec<pb::AttributeProto>,
    ) -> Vec<String> {
        let outputs: Vec<String> = if n_outputs == 1 {
            vec![self.fresh(hint)]
        } else {
            (0..n_outputs).map(|i| self.fresh(&format!("{hint}.{i}"))).collect()
        };
        self.nodes.push(pb::NodeProto {
            name: outputs[0].clone(),
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    /// The finished model: opset 17, IR version 8.
    pub fn finish(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: PRODUCER.to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(pb::GraphProto {
                name: self.name,
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    // ---- shape plumbing -------------------------------------------------------------------

    /// `Reshape` to a constant target (ONNX semantics: 0 copies the input dim, -1 is inferred).
    pub fn reshape(&mut self, x: &str, hint: &str, shape: &[i64]) -> String {
        let shape = self.const_i64(shape);
        self.node("Reshape", hint, &[x, &shape], vec![])
    }

    pub fn transpose(&mut self, x: &str, hint: &str, perm: &[i64]) -> String {
        self.node("Transpose", hint, &[x], vec![attr_ints("perm", perm)])
    }

    pub fn add(&mut self, a: &str, b: &str, hint: &str) -> String {
        self.node("Add", hint, &[a, b], vec![])
    }

    pub fn mul(&mut self, a: &str, b: &str, hint: &str) -> String {
        self.node("Mul", hint, &[a, b], vec![])
    }

    pub fn matmul(&mut self, a: &str, b: &str, hint: &str) -> String {
        self.node("MatMul", hint, &[a, b], vec![])
    }

    /// `Gather` with a constant scalar index: picks one slice of `axis` and drops that axis.
    pub fn pick(&mut self, x: &str, hint: &str, axis: i64, index: i64) -> String {
        let index = self.scalar_i64(index);
        self.node("Gather", hint, &[x, &index], vec![attr_int("axis", axis)])
    }

    // ---- layers ---------------------------------------------------------------------------

    /// `x @ w + b` with `w` already laid out [in, out] (GPT-2's Conv1D stores it so).
    pub fn matmul_bias(&mut self, x: &str, hint: &str, w: &Tensor, b: Option<&Tensor>) -> String {
        let w = self.initializer(&format!("{hint}.weight"), w);
        let y = self.matmul(x, &w, &format!("{hint}.matmul"));
        match b {
            Some(b) => {
                let b = self.initializer(&format!("{hint}.bias"), b);
                self.add(&y, &b, hint)
            }
            None => y,
        }
    }

    /// A PyTorch `nn.Linear` called `prefix` in `w` (`prefix.weight` [out, in], optional
    /// `prefix.bias` [out]). The weight is transposed here, once, so the graph holds the
    /// [in, out] matrix `MatMul` wants and tract never transposes it at run time.
    pub fn linear(&mut self, x: &str, w: &TensorMap, prefix: &str, dims: (usize, usize), bias: bool) -> Result<String> {
        let (d_in, d_out) = dims;
        let weight = w.get_shaped(&format!("{prefix}.weight"), &[d_out, d_in])?.transposed()?;
        let b = if bias { Some(w.get_shaped(&format!("{prefix}.bias"), &[d_out])?) } else { None };
        Ok(self.matmul_bias(x, prefix, &weight, b))
    }

    /// A PyTorch `nn.LayerNorm(dim)` called `prefix`, over the last axis, as ONNX
    /// `LayerNormalization` (opset 17; tract expands it into reductions it optimises).
    pub fn layer_norm(&mut self, x: &str, w: &TensorMap, prefix: &str, dim: usize, eps: f32) -> Result<String> {
        let scale = w.get_shaped(&format!("{prefix}.weight"), &[dim])?;
        let bias = w.get_shaped(&format!("{prefix}.bias"), &[dim])?;
        let scale = self.initializer(&format!("{prefix}.weight"), scale);
        let bias = self.initializer(&format!("{prefix}.bias"), bias);
        Ok(self.node(
            "LayerNormalization",
            prefix,
            &[x, &scale, &bias],
            vec![attr_int("axis", -1), attr_float("epsilon", eps)],
        ))
    }

    /// [N, T, heads·hd] → [N, heads, T, hd].
    pub fn split_heads(&mut self, x: &str, hint: &str, heads: usize, head_dim: usize) -> String {
        let x = self.reshape(x, &format!("{hint}.reshape"), &[0, 0, heads as i64, head_dim as i64]);
        self.transpose(&x, hint, &[0, 2, 1, 3])
    }

    /// [N, heads, T, hd] → [N, T, heads·hd].
    pub fn merge_heads(&mut self, x: &str, hint: &str, hidden: usize) -> String {
        let x = self.transpose(x, &format!("{hint}.transpose"), &[0, 2, 1, 3]);
        self.reshape(&x, hint, &[0, 0, hidden as i64])
    }

    /// softmax(q·kᵀ·scale + bias)·v for q [N, H, S, hd], k and v [N, H, T, hd]; `bias`
    /// broadcasts against the [N, H, S, T] scores (GPT-2's causal/past mask).
    pub fn attention(&mut self, hint: &str, qkv: (&str, &str, &str), scale: f32, bias: Option<&str>) -> String {
        let (q, k, v) = qkv;
        // Scaling q (S·hd values) is cheaper than scaling the scores (S·T values).
        let s = self.scalar_f32(scale);
        let q = self.mul(q, &s, &format!("{hint}.q_scaled"));
        let kt = self.transpose(k, &format!("{hint}.k_t"), &[0, 1, 3, 2]);
        let mut scores = self.matmul(&q, &kt, &format!("{hint}.scores"));
        if let Some(bias) = bias {
            scores = self.add(&scores, bias, &format!("{hint}.scores_masked"));
        }
        let probs = self.node("Softmax", &format!("{hint}.probs"), &[&scores], vec![attr_int("axis", -1)]);
        self.matmul(&probs, v, &format!("{hint}.context"))
    }

    // ---- activations ----------------------------------------------------------------------

    /// OpenAI CLIP's `x · sigmoid(1.702 x)`.
    pub fn quick_gelu(&mut self, x: &str, hint: &str) -> String {
        let k = self.scalar_f32(1.702);
        let kx = self.mul(x, &k, &format!("{hint}.scaled"));
        let sig = self.node("Sigmoid", &format!("{hint}.sigmoid"), &[&kx], vec![]);
        self.mul(x, &sig, hint)
    }

    /// The exact GELU, `0.5 x (1 + erf(x / √2))`.
    pub fn gelu_erf(&mut self, x: &str, hint: &str) -> String {
        let inv_sqrt2 = self.scalar_f32(std::f32::consts::FRAC_1_SQRT_2);
        let one = self.scalar_f32(1.0);
        let half = self.scalar_f32(0.5);
        let xs = self.mul(x, &inv_sqrt2, &format!("{hint}.scaled"));
        let e = self.node("Erf", &format!("{hint}.erf"), &[&xs], vec![]);
        let e1 = self.add(&e, &one, &format!("{hint}.erf_plus_one"));
        let hx = self.mul(x, &half, &format!("{hint}.half_x"));
        self.mul(&hx, &e1, hint)
    }

    /// GPT-2's `gelu_new`: `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
    pub fn gelu_tanh(&mut self, x: &str, hint: &str) -> String {
        let c = self.scalar_f32((2.0f64 / std::f64::consts::PI).sqrt() as f32);
        let k = self.scalar_f32(0.044715);
        let one = self.scalar_f32(1.0);
        let half = self.scalar_f32(0.5);
        let x2 = self.mul(x, x, &format!("{hint}.x2"));
        let x3 = self.mul(&x2, x, &format!("{hint}.x3"));
        let kx3 = self.mul(&x3, &k, &format!("{hint}.kx3"));
        let inner = self.add(x, &kx3, &format!("{hint}.inner"));
        let inner = self.mul(&inner, &c, &format!("{hint}.inner_scaled"));
        let t = self.node("Tanh", &format!("{hint}.tanh"), &[&inner], vec![]);
        let t1 = self.add(&t, &one, &format!("{hint}.tanh_plus_one"));
        let hx = self.mul(x, &half, &format!("{hint}.half_x"));
        self.mul(&hx, &t1, hint)
    }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Sym(s) => dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem.data_type() as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// Writes `model` to `path` atomically, so a reader never sees half a graph.
pub fn save(model: &pb::ModelProto, path: &Path) -> Result<()> {
    write_atomic(path, &model.encode_to_vec()).with_context(|| format!("{}: cannot write ONNX graph", path.display()))
}
