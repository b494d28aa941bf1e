//! Parsing an ONNX graph whose int8 weights go to their products without a tract tensor.
//!
//! tract makes a tensor of every initializer before it parses the first node: a copy of bytes
//! the protobuf decoder has just copied out of the file. For an int8 bundle that is every weight,
//! ~190 MB and a third of start-up, mostly page faults on the fresh copy. Here the weights of the
//! products that [`Int8MatMul`] runs are moved out of the decoded proto into their operators,
//! which pack them; tract parses an empty initializer in their place.

use std::cell::RefCell;
use std::collections::HashMap;

use tract_onnx::model::ParseResult;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::Onnx;

use super::op::{fast_op, Constants, Int8MatMul, Parsed};

thread_local! {
    /// The products parsed ahead, their weights in hand, by the node's first output. tract's
    /// parsers are plain functions: this is how the one for the products finds them.
    static TAKEN: RefCell<HashMap<String, Parsed<Int8MatMul>>> = RefCell::default();
}

/// The graph of `proto`, as `onnx.model_for_proto_model` would parse it, with the weights of
/// the fast-path products taken rather than copied. `model_dir` resolves external data.
pub fn model_for_proto(onnx: &Onnx, mut proto: ModelProto, model_dir: Option<&str>) -> TractResult<InferenceModel> {
    let taken = take_weights(onnx, &mut proto, model_dir)?;
    TAKEN.with(|t| *t.borrow_mut() = taken);
    let parsed = onnx.parse(&proto, model_dir);
    let left = TAKEN.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let ParseResult { model, unresolved_inputs, .. } = parsed?;
    ensure!(unresolved_inputs.is_empty(), "could not resolve inputs at top level: {unresolved_inputs:?}");
    // Each taken weight left only an empty initializer behind: its product must have been built.
    ensure!(left.is_empty(), "products parsed ahead but not found in the graph: {:?}", left.keys());
    Ok(model)
}

/// The operator parsed ahead for `node`, if its weight was taken.
pub(super) fn taken(node: &NodeProto) -> Option<Parsed<Int8MatMul>> {
    let key = node.output.first()?;
    TAKEN.with(|t| t.borrow_mut().remove(key))
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
