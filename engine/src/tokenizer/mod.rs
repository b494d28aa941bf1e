//! Text tokenizers, written for the engine rather than borrowed from the `tokenizers` crate so that
//! they stay small enough for the boards the firmware runs on.
//!
//! * [`Gpt2Tokenizer`]: GPT-2's byte-level BPE, loaded from `vocab.json` + `merges.txt` or from a
//!   Hugging Face `tokenizer.json`. It produces the same ids as Hugging Face's `GPT2TokenizerFast`
//!   (checked against fixtures in `tests/fixtures/tokenizer/`).
//! * [`ClipTokenizer`]: CLIP's BPE (lower-cased, whitespace-collapsed, `</w>` word ends), loaded
//!   from an HF CLIP directory's `vocab.json` + `merges.txt`, or built from open_clip's
//!   `bpe_simple_vocab_16e6.txt.gz` with [`clip_vocab_from_bpe`]. Same ids as transformers'
//!   `CLIPTokenizer`.
//! * `bpe` (private): the merge algorithm and the byte-to-symbol table, shared with the CLIP BPE
//!   tokenizer.
//!
//! Loading never panics on a malformed file: every problem is a [`TokenizerError`] whose message is
//! one line naming the file and what is wrong with it.

mod bpe;
mod clip;
mod gpt2;

pub use clip::{
    clip_byte_symbols, clip_byte_symbols_in_id_order, clip_vocab_from_bpe, clip_words, ClipTokenizer,
    CLIP_CONTEXT_LENGTH,
};
pub use gpt2::Gpt2Tokenizer;

use std::path::{Path, PathBuf};

use crate::format::manifest::TokenizerKind;

use serde::Deserialize;

/// The tokenizer a bundle's decoder speaks.
#[derive(Debug, Clone)]
pub enum TextTokenizer {
    Gpt2(Box<Gpt2Tokenizer>),
    Clip(Box<ClipTokenizer>),
}

impl TextTokenizer {
    /// Loads `vocab.json` + `merges.txt` of the given kind.
    pub fn from_files(kind: TokenizerKind, vocab: &Path, merges: &Path) -> Result<Self, TokenizerError> {
        Ok(match kind {
            TokenizerKind::Gpt2Bpe => TextTokenizer::Gpt2(Box::new(Gpt2Tokenizer::from_files(vocab, merges)?)),
            TokenizerKind::ClipBpe => TextTokenizer::Clip(Box::new(ClipTokenizer::from_files(vocab, merges)?)),
        })
    }

    /// Caption text of generated ids (CLIP's start/end tokens dropped), trimmed.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        Ok(match self {
            TextTokenizer::Gpt2(t) => t.decode(ids)?.trim().to_string(),
            TextTokenizer::Clip(t) => t.decode(ids)?,
        })
    }

    /// The ids a decoder would generate for `text`: CLIP's with its start and end tokens
    /// (DeCap decodes both), GPT-2's as is.
    pub fn encode_caption(&self, text: &str) -> Vec<u32> {
        match self {
            TextTokenizer::Gpt2(t) => t.encode(text),
            TextTokenizer::Clip(t) => t.encode_for_model(text),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Gpt2(t) => t.vocab_size(),
            TextTokenizer::Clip(t) => t.vocab_size(),
        }
    }
}

/// Everything that can go wrong while loading a tokenizer or decoding ids.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file is missing, unreadable or not UTF-8.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON, or its JSON does not have the expected shape.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A merge rule that is not exactly two tokens (`location` is e.g. `line 7` or `model.merges[6]`).
    #[error("{}: {location}: merge rule {text:?} is not two tokens separated by one space", path.display())]
    BadMerge { path: PathBuf, location: String, text: String },
    /// A merge rule that uses, or produces, a token the vocabulary does not have.
    #[error("{}: {location}: merge rule uses or produces {token:?}, which is not in the vocabulary", path.display())]
    MergeTokenMissing { path: PathBuf, location: String, token: String },
    /// Any other inconsistency in the files (duplicate ids, missing byte symbols, empty tokens, ...).
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    /// A `tokenizer.json` that asks for a feature this implementation does not have; refusing it is
    /// better than silently producing ids that differ from the reference tokenizer.
    #[error("{}: unsupported tokenizer.json: {feature}", path.display())]
    Unsupported { path: PathBuf, feature: String },
    /// `decode` was given an id that no token has.
    #[error("token id {id} is not in the tokenizer's vocabulary ({vocab_size} tokens)")]
    UnknownId { id: u32, vocab_size: usize },
}

pub(crate) fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Read { path: path.to_owned(), source })
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, TokenizerError> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json { path: path.to_owned(), source })
}
