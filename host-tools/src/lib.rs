//! host-tools: turn users' weights into edgecap bundles and inspect what the engine computes.

pub mod checkpoint;
pub mod export;
pub mod export_decap;
pub mod memory;
pub mod onnx;
pub mod projection;
pub mod tensor;
pub mod text_encoder;
pub mod trace;
