//! host-tools: turn users' weights into edgecap bundles and inspect what the engine computes.

pub mod bench;
pub mod checkpoint;
pub mod export;
pub mod export_decap;
pub mod images;
pub mod memory;
pub mod metrics;
pub mod onnx;
pub mod progress;
pub mod projection;
pub mod quantize;
pub mod references;
pub mod tensor;
pub mod text_encoder;
pub mod trace;
pub mod validate;
