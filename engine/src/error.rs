//! The engine's error type: callers tell a bad image (skip it, go on) from a bad bundle (stop).

use thiserror::Error;

use crate::format::bundle::BundleError;
use crate::image_load::ImageError;
use crate::tokenizer::TokenizerError;
// The message helpers live in `text`, which imports nothing of the crate, so that the modules
// whose errors `EngineError` wraps can use them; re-exported here, where callers look for them.
pub use crate::text::{collapse_whitespace, excerpt, one_line};

#[derive(Debug, Error)]
pub enum EngineError {
    /// The bundle is missing, damaged or inconsistent.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// One input image could not be used; other images are unaffected.
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A graph in the bundle does not load or does not have the shapes the manifest declares.
    #[error("{path}: {message}")]
    Graph { path: String, message: String },
    /// tract failed while running a stage (a bug or an exhausted resource, not bad user data).
    #[error("inference failed in {stage}: {message}")]
    Inference { stage: &'static str, message: String },
    /// A generation option is out of range for this bundle.
    #[error("invalid option: {0}")]
    Option(String),
}

impl EngineError {
    pub(crate) fn inference(stage: &'static str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Inference { stage, message: collapse_whitespace(&e.to_string()) }
    }

    /// True when the error concerns one input only, so a batch should report it and go on.
    pub fn is_per_input(&self) -> bool {
        matches!(self, EngineError::Image(_))
    }
}
