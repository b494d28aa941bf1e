//! The engine's error type: callers tell a bad image (skip it, go on) from a bad bundle (stop).

use thiserror::Error;

use crate::bundle::BundleError;
use crate::image_load::ImageError;
use crate::tokenizer::TokenizerError;

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

/// `text` on one line: every run of whitespace (newlines included) becomes one space. Messages
/// from tract, toml and the OS span lines; ours are one line each.
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max_chars` characters of `text`, with "…" where it was cut: a user's value quoted in
/// an error stays one short line however long the value.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An error and its chain of causes on one line, outermost first, skipping a cause whose text
/// an earlier part already contains (wrappers often repeat their source). Both binaries print
/// user-facing errors this way.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = collapse_whitespace(&cause.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}
