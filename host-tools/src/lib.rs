//! host-tools: turn users' weights into edgecap bundles and inspect what the engine computes.

pub mod bench;
pub mod bpe_train;
pub mod checkpoint;
pub mod export;
pub mod export_decap;
pub mod image_encoder;
pub mod images;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod onnx;
pub mod progress;
pub mod projection;
pub mod quantize;
pub mod references;
pub mod rng;
pub mod scenes;
pub mod tensor;
pub mod text_encoder;
pub mod trace;
#[cfg(feature = "train")]
pub mod train;
pub mod trim;
pub mod validate;
