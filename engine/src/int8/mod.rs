//! edgecap's own int8 matrix products, for the one-row products of decoding.
//!
//! Graphs stay standard ONNX (`QLinearMatMul`, `MatMulInteger`: ONNX Runtime and Netron read
//! them); while a graph is parsed, every such product by a constant weight becomes an
//! [`op::Int8MatMul`] running [`kernel`], and each `QuantizeLinear` a [`quantize::QuantizeLinear`],
//! on CPUs that have a kernel here. Elsewhere tract's own implementation runs, as before.
//! The products are shared between the threads of [`pool`]. [`parse`] hands them their weights
//! straight from the decoded file, without the tensor tract would make of each.

pub mod kernel;
pub mod op;
pub mod parse;
pub mod passes;
pub mod pool;
pub mod quantize;

/// tract's ONNX loader with the integer products of this module in place of tract's.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    parse::register(&mut onnx.op_register);
    onnx
}
