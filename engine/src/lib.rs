//! edgecap-engine: the captioning engine shared by the device firmware and host-tools,
//! so that the host validates exactly the code the device runs.
//!
//! Layers, from the outside in: a [`bundle::Bundle`] (verified files + [`manifest::Manifest`])
//! loads into an immutable [`model::CaptionModel`]; each caption runs a cheap
//! [`session::DecoderState`] through [`generate::generate`]; [`model::caption`] ties image →
//! caption.
//!
//! What a caller needs is re-exported here (`examples/caption` uses only these):
//!
//! ```no_run
//! # fn main() -> Result<(), edgecap_engine::EngineError> {
//! let model = edgecap_engine::CaptionModel::load("models/default".as_ref())?;
//! let image = edgecap_engine::load_rgb("photo.jpg".as_ref())?;
//! println!("{}", model.caption(&image, &model.default_options())?.text);
//! # Ok(())
//! # }
//! ```

pub mod attention;
pub mod error;
pub mod float;
pub mod format;
pub mod fuse;
pub mod generate;
pub mod graph;
pub mod image_load;
pub mod int8;
pub mod kv_cache;
pub mod logits;
pub mod memory;
pub mod model;
pub mod platform;
pub mod preprocess;
pub mod session;
pub mod stage;
pub mod text;
pub mod tokenizer;

pub use error::EngineError;
pub use generate::GenerationOptions;
pub use image_load::load_rgb;
pub use model::caption::{Caption, StageTimings, Trace};
pub use model::CaptionModel;

// The file formats keep their paths at the root (`edgecap_engine::bundle`, ...), where callers
// have always found them.
pub use format::{bundle, fsutil, manifest, npy};
