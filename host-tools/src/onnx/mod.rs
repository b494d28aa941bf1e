//! ONNX graphs written from Rust: the CLIP image encoder, the ClipCap mappers and the GPT-2 decoder.
//!
//! Each model file turns a [`crate::tensor::TensorMap`] of checkpoint weights into an fp32
//! `ModelProto` (opset 17) that tract 0.23.9 loads, optimises and runs with symbolic batch and
//! sequence dimensions; [`save`] writes one to disk.

pub mod builder;
pub mod clip_text;
pub mod clip_vision;
pub mod gpt2;
pub mod mapper;

pub use builder::save;
