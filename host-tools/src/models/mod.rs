//! The models host-tools knows, each as candle keeps them: its configuration, the weight names
//! of its checkpoint layout and its constants, apart from what is built from them (the ONNX
//! graphs in `onnx`, the trainable models in `train`) so that the exporters, the graph writers
//! and the trainers all read one definition.

pub mod clip_text;
pub mod clip_vision;
pub mod gpt2;
mod hf_config;
pub mod mapper;
