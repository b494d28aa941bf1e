//! edgecap-engine: the captioning engine shared by the device firmware and host-tools,
//! so that the host validates exactly the code the device runs.
//!
//! Layers, from the outside in: a [`bundle::Bundle`] (verified files + [`manifest::Manifest`])
//! loads into an immutable [`model::CaptionModel`]; each caption runs a cheap
//! [`session::DecoderState`] through [`generate::generate`]; [`pipeline`] ties image → caption.

pub mod attention;
pub mod bundle;
pub mod error;
pub mod float;
pub mod fsutil;
pub mod gelu;
pub mod generate;
pub mod graph;
pub mod image_load;
pub mod int8;
pub mod kv_cache;
pub mod logits;
pub mod manifest;
pub mod memory;
pub mod model;
pub mod npy;
pub mod pipeline;
pub mod platform;
pub mod preprocess;
pub mod session;
pub mod splice;
pub mod stage;
pub mod text;
pub mod tokenizer;
