//! edgecap's ONNX parsing: the parsers that put [`Int8MatMul`] and [`QuantizeLinear`] in place of
//! tract's own for the nodes they can run, and a graph parse whose int8 weights go to their
//! products without a tract tensor.
//!
//! tract makes a tensor of every initializer before it parses the first node: a copy of bytes
//! the protobuf decoder has just copied out of the file. For an int8 bundle that is every weight,
//! ~190 MB and a third of start-up, mostly page faults on the fresh copy. Here the weights of the
//! products that [`Int8MatMul`] runs are moved out of the decoded proto into their operators,
//! which pack them; tract parses an empty initializer in their place.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::model::{OnnxOpRegister, ParseResult, ParsingContext};
use tract_onnx::pb::tensor_proto::DataType as TensorProtoDataType;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::Onnx;

use super::kernel::Kernel;
use super::op::{Block, Int8MatMul, Output, Weights};
use super::quantize::QuantizeLinear;

/// The graph of `proto`, as `onnx.model_for_proto_model` would parse it, with the weights of
/// the fast-path products taken rather than copied. `model_dir` resolves external data.
///
/// tract's parsers are plain functions, so the products parsed ahead cannot be handed to them:
/// tract parses each such node as its own operator over the empty initializer left behind, and
/// that operator is then replaced by the product holding the weight.
pub fn model_for_proto(onnx: &Onnx, mut proto: ModelProto, model_dir: Option<&str>) -> TractResult<InferenceModel> {
    let taken = take_weights(onnx, &mut proto, model_dir)?;
    let ParseResult { mut model, unresolved_inputs, .. } = onnx.parse(&proto, model_dir)?;
    ensure!(unresolved_inputs.is_empty(), "could not resolve inputs at top level: {unresolved_inputs:?}");
    for (output, parsed) in taken {
        let outlet = model
            .find_outlet_label(&output)
            .with_context(|| format!("product {output} parsed ahead but not found in the graph"))?;
        model.nodes[outlet.node].op = expand(parsed);
    }
    Ok(model)
}

/// Moves the weight of each fast-path product out of the top-level graph's initializers, when
/// nothing else reads it, and returns the products with their weights, by first output.
fn take_weights(
    onnx: &Onnx,
    proto: &mut ModelProto,
    model_dir: Option<&str>,
) -> TractResult<HashMap<String, Parsed<Int8MatMul>>> {
    let Some(graph) = proto.graph.as_mut() else { return Ok(HashMap::new()) };
    let mut products = Vec::new();
    for node in &graph.node {
        let c = Constants::of(graph, &*onnx.provider, model_dir, node);
        let (Some(parsed), Some(key)) = (fast_op(&c)?, node.output.first()) else { continue };
        if let Some((input, k, n)) = parsed.weight_input() {
            products.push((key.clone(), node.input[input].clone(), k * n, parsed));
        }
    }
    let mut reads = HashMap::new();
    count_reads(graph, &mut reads);
    for value in graph.input.iter().chain(&graph.output) {
        *reads.entry(value.name.clone()).or_default() += 1;
    }
    let index: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut taken = HashMap::new();
    for (key, weight, len, parsed) in products {
        // A weight read elsewhere too, or stored outside raw_data, stays a tensor for tract.
        let Some(&i) = index.get(&weight).filter(|_| reads.get(&weight) == Some(&1)) else { continue };
        let init = &mut graph.initializer[i];
        if init.raw_data.len() != len {
            continue;
        }
        let bytes = std::mem::take(&mut init.raw_data);
        // The empty constant tract makes of it is read by nothing and dropped with dead nodes.
        init.dims[0] = 0;
        taken.insert(key, parsed.with_taken(bytes));
    }
    Ok(taken)
}

/// How many times each value is read as a node input, in `graph` and in its subgraphs (which may
/// read the outer graph's initializers).
fn count_reads(graph: &GraphProto, reads: &mut HashMap<String, usize>) {
    for node in &graph.node {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            *reads.entry(input.clone()).or_default() += 1;
        }
        for attribute in &node.attribute {
            attribute.g.iter().chain(&attribute.graphs).for_each(|g| count_reads(g, reads));
        }
    }
}

/// An operator parsed by edgecap, as it goes into the typed graph.
pub(super) trait Wired: TypedOp + Clone {
    /// The operator for a node whose inputs are wired to `inputs` (initializers are constants
    /// there); by default itself.
    fn wired(&self, _model: &TypedModel, _inputs: &[OutletId]) -> TractResult<Self> {
        Ok(self.clone())
    }
}

impl Wired for Int8MatMul {
    /// Takes the weight from tract's constant: the tensor is shared, not copied.
    fn wired(&self, model: &TypedModel, inputs: &[OutletId]) -> TractResult<Self> {
        let Weights::Input { input, k, n } = *self.weights else { return Ok(self.clone()) };
        let outlet = *inputs.get(input).context("Int8MatMul: weight input not wired")?;
        let w = model.outlet_fact(outlet)?.konst.clone().context("Int8MatMul: weight is not a constant")?;
        ensure!(
            w.datum_type() == DatumType::I8 && w.shape() == [k, n],
            "Int8MatMul: weight {:?} {:?}, parsed as i8 [{k}, {n}]",
            w.datum_type(),
            w.shape()
        );
        Ok(Int8MatMul { weights: Arc::new(Weights::Blocks(vec![Arc::new(Block::Constant(w))])), ..self.clone() })
    }
}

/// An edgecap operator as tract's ONNX parser holds it: its output follows from its first input
/// by the operator's own `output_facts`; the node's other inputs are initializers it has read.
#[derive(Debug, Clone)]
pub(super) struct Parsed<O> {
    pub op: O,
    pub arity: usize,
}

impl Parsed<Int8MatMul> {
    /// The node input whose initializer holds the weight and the weight's `[k, n]`, while the
    /// weight is still to be wired from it.
    pub(super) fn weight_input(&self) -> Option<(usize, usize, usize)> {
        match *self.op.weights {
            Weights::Input { input, k, n } => Some((input, k, n)),
            Weights::Blocks(_) | Weights::Packed(_) => None,
        }
    }

    /// The product with its weight's `[k, n]` bytes in hand, taken from the initializer.
    pub(super) fn with_taken(self, bytes: Vec<u8>) -> Parsed<Int8MatMul> {
        let (k, n) = (self.op.weights.k(), self.op.weights.n());
        debug_assert_eq!(bytes.len(), k * n);
        let weights = Arc::new(Weights::Blocks(vec![Arc::new(Block::Taken { k, n, bytes })]));
        Parsed { op: Int8MatMul { weights, ..self.op }, arity: self.arity }
    }
}

impl<O: Wired> Expansion for Parsed<O> {
    fn name(&self) -> StaticName {
        self.op.name()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.arity)?;
        check_output_arity(outputs, 1)?;
        s.given_2(&inputs[0].datum_type, &inputs[0].shape, move |s, datum, shape| {
            let fact = self.op.output_facts(&[&datum.fact(shape)])?.remove(0);
            s.equals(&outputs[0].datum_type, fact.datum_type)?;
            s.equals(&outputs[0].shape, fact.shape.to_tvec())
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let op = self.op.wired(model, inputs)?;
        model.wire_node(prefix, op, &inputs[..1])
    }
}

impl Wired for QuantizeLinear {}

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's parser for `op`, for the nodes the fast path does not take.
pub(super) fn tract_builder(op: &str) -> TractResult<Builder> {
    static TRACT: OnceLock<OnnxOpRegister> = OnceLock::new();
    let register = TRACT.get_or_init(|| tract_onnx::onnx().op_register);
    register.0.get(op).copied().with_context(|| format!("tract has no parser for {op}"))
}

/// Puts the fast path in place of tract's parsers for the two ONNX integer products and the
/// quantization of their activations, on CPUs with a kernel.
pub fn register(register: &mut OnnxOpRegister) {
    if Kernel::detect().is_some() {
        register.insert("QLinearMatMul", product);
        register.insert("MatMulInteger", product);
        register.insert("QuantizeLinear", quantize_linear);
    }
}

/// The parser of both products: the fast path, or tract's own (also for a product whose weight
/// was taken: [`model_for_proto`] replaces it).
fn product(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let parsed = match Constants::new(ctx, node) {
        Some(c) => fast_op(&c)?,
        None => None,
    };
    match parsed {
        Some(parsed) => Ok((expand(parsed), vec![])),
        None => tract_builder(&node.op_type)?(ctx, node),
    }
}

/// The [`Int8MatMul`] for a `QLinearMatMul` or `MatMulInteger` node, if it takes the fast path:
/// a kernel for this CPU, and the constants in the forms `host-tools quantize` writes.
pub(super) fn fast_op(c: &Constants) -> TractResult<Option<Parsed<Int8MatMul>>> {
    let Some(kernel) = Kernel::detect() else { return Ok(None) };
    let node = c.node;
    // Optional zero points may be given as empty names; only the plain forms take the fast path.
    let arity = node.input.iter().filter(|i| !i.is_empty()).count();
    let op = match node.op_type.as_str() {
        "QLinearMatMul" if node.input.len() == 8 && arity == 8 => qlinear_op(kernel, c)?,
        "MatMulInteger" if node.input.len() == arity => integer_op(kernel, c, arity)?,
        _ => None,
    };
    Ok(op.map(|op| Parsed { op, arity }))
}

/// Inputs: a, a_scale, a_zero, w, w_scale, w_zero, y_scale, y_zero.
fn qlinear_op(kernel: Kernel, c: &Constants) -> TractResult<Option<Int8MatMul>> {
    let (Some(a_scale), Some(a_zero), Some(w_scale), Some(w_zero), Some(y_scale), Some(y_zero)) =
        (c.get(1)?, c.get(2)?, c.get(4)?, c.get(5)?, c.get(6)?, c.get(7)?)
    else {
        return Ok(None);
    };
    let Some(weights) = weight_input(c, 3, Some(&w_zero))? else { return Ok(None) };
    let (Some(a_scale), Some(y_scale), Some(a_zero), Some(zero)) =
        (scalar_f32(&a_scale)?, scalar_f32(&y_scale)?, scalar_int(&a_zero)?, scalar_int(&y_zero)?)
    else {
        return Ok(None);
    };
    let datum = y_zero.datum_type();
    let w_scale = w_scale.cast_to::<f32>()?;
    let w_scale = w_scale.try_as_plain_ram()?.as_slice::<f32>()?;
    if !(w_scale.len() == 1 || w_scale.len() == weights.n()) || !matches!(datum, DatumType::I8 | DatumType::U8) {
        return Ok(None);
    }
    // One multiplier per column, a per-tensor scale repeated: one indexing in the output loop.
    let multipliers =
        (0..weights.n()).map(|j| a_scale * w_scale[if w_scale.len() == 1 { 0 } else { j }] / y_scale).collect();
    Ok(Some(Int8MatMul {
        kernel,
        weights: Arc::new(weights),
        a_zero,
        output: Output::Requantized { multipliers, zero, datum },
    }))
}

/// Inputs: a, w, optional a_zero, optional w_zero.
fn integer_op(kernel: Kernel, c: &Constants, arity: usize) -> TractResult<Option<Int8MatMul>> {
    let w_zero = if arity > 3 { c.get(3)? } else { None };
    if arity > 3 && w_zero.is_none() {
        return Ok(None);
    }
    let a_zero = match arity {
        2 => 0,
        _ => match c.get(2)?.map(|z| scalar_int(&z)).transpose()?.flatten() {
            Some(z) => z,
            None => return Ok(None),
        },
    };
    let Some(weights) = weight_input(c, 1, w_zero.as_ref())? else { return Ok(None) };
    Ok(Some(Int8MatMul { kernel, weights: Arc::new(weights), a_zero, output: Output::Sums }))
}

/// The node's inputs that are initializers of the graph holding it.
pub(super) struct Constants<'a> {
    graph: &'a GraphProto,
    provider: &'a dyn ModelDataResolver,
    model_dir: Option<&'a str>,
    pub(super) node: &'a NodeProto,
}

impl<'a> Constants<'a> {
    /// While tract parses the node.
    pub(super) fn new(ctx: &'a ParsingContext<'a>, node: &'a NodeProto) -> Option<Constants<'a>> {
        // tract pushes each graph it parses, so the last one holds the node.
        let graph = ctx.parent_graphs.last()?;
        Some(Constants { graph, provider: &*ctx.framework.provider, model_dir: ctx.model_dir, node })
    }

    /// Before tract parses the graph holding the node.
    pub(super) fn of(
        graph: &'a GraphProto,
        provider: &'a dyn ModelDataResolver,
        model_dir: Option<&'a str>,
        node: &'a NodeProto,
    ) -> Constants<'a> {
        Constants { graph, provider, model_dir, node }
    }

    pub(super) fn get(&self, input: usize) -> TractResult<Option<Tensor>> {
        match self.proto(input) {
            Some(t) => Ok(Some(tract_onnx::tensor::load_tensor(self.provider, t, self.model_dir)?)),
            None => Ok(None),
        }
    }

    /// The initializer feeding `input`, undecoded.
    fn proto(&self, input: usize) -> Option<&'a TensorProto> {
        let name = self.node.input.get(input).filter(|n| !n.is_empty())?;
        self.graph.initializer.iter().find(|t| &t.name == name)
    }
}

/// The weight feeding `input`, if it is a 2-D int8 initializer with a zero point of 0.
fn weight_input(c: &Constants, input: usize, zero: Option<&Tensor>) -> TractResult<Option<Weights>> {
    let Some(w) = c.proto(input) else { return Ok(None) };
    let (&[k, n], true) = (&w.dims[..], w.data_type == TensorProtoDataType::Int8 as i32) else { return Ok(None) };
    // A weight of no rows is what a taken weight leaves in the proto: never a product's.
    let (Ok(k @ 1..), Ok(n)) = (usize::try_from(k), usize::try_from(n)) else { return Ok(None) };
    if let Some(zero) = zero {
        if zero.datum_type() != DatumType::I8 || zero.try_as_plain_ram()?.as_slice::<i8>()?.iter().any(|&z| z != 0) {
            return Ok(None);
        }
    }
    Ok(Some(Weights::Input { input, k, n }))
}

fn scalar_f32(t: &Tensor) -> TractResult<Option<f32>> {
    if t.len() != 1 || t.datum_type() != DatumType::F32 {
        return Ok(None);
    }
    Ok(Some(t.try_as_plain_ram()?.as_slice::<f32>()?[0]))
}

/// A one-value i8 or u8 zero point.
fn scalar_int(t: &Tensor) -> TractResult<Option<i32>> {
    if t.len() != 1 {
        return Ok(None);
    }
    Ok(match t.datum_type() {
        DatumType::I8 => Some(t.try_as_plain_ram()?.as_slice::<i8>()?[0] as i32),
        DatumType::U8 => Some(t.try_as_plain_ram()?.as_slice::<u8>()?[0] as i32),
        _ => None,
    })
}

/// `QuantizeLinear(x, scale, zero)` with a one-value scale and i8/u8 zero point from
/// initializers; any other form is tract's.
fn quantize_linear(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if let Some(op) = from_node(ctx, node)? {
        return Ok((expand(Parsed { op, arity: node.input.len() }), vec![]));
    }
    tract_builder("QuantizeLinear")?(ctx, node)
}

fn from_node(ctx: &ParsingContext, node: &NodeProto) -> TractResult<Option<QuantizeLinear>> {
    let Some(c) = Constants::new(ctx, node) else { return Ok(None) };
    if node.input.len() != 3 || node.input.iter().any(|i| i.is_empty()) {
        return Ok(None);
    }
    let (Some(scale), Some(zero)) = (c.get(1)?, c.get(2)?) else { return Ok(None) };
    if scale.len() != 1 || scale.datum_type() != DatumType::F32 || zero.len() != 1 {
        return Ok(None);
    }
    let scale = scale.try_as_plain_ram()?.as_slice::<f32>()?[0];
    let (zero, datum) = match zero.datum_type() {
        DatumType::I8 => (zero.try_as_plain_ram()?.as_slice::<i8>()?[0] as i32, DatumType::I8),
        DatumType::U8 => (zero.try_as_plain_ram()?.as_slice::<u8>()?[0] as i32, DatumType::U8),
        _ => return Ok(None),
    };
    if !(scale.is_finite() && scale > 0.0) {
        return Ok(None);
    }
    Ok(Some(QuantizeLinear { scale, zero, datum }))
}
