//! `bundle.toml`: the versioned manifest that says what a model bundle holds and how to run it.
//!
//! The manifest is the bundle's configuration; the weights live in the files it names and the
//! runtime state lives in the `session` module. Everything here is plain data with serde, so the
//! exporter on the workstation and the device read exactly the same format.

use serde::{Deserialize, Serialize};

use crate::preprocess::PreprocessConfig;

/// The manifest format this engine writes and reads. Bump when a reader of the old version would
/// misread a new bundle.
pub const FORMAT_VERSION: u32 = 1;

/// The file name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "bundle.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// ClipCap with the MLP mapping network.
    ClipcapMlp,
    /// ClipCap with the transformer mapping network (learned constant queries).
    ClipcapTransformer,
    /// DeCap: the image embedding is projected onto a memory of caption embeddings, then mapped
    /// to a one-token prefix of a decoder trained on text only.
    Decap,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::ClipcapMlp => "clipcap-mlp",
            Architecture::ClipcapTransformer => "clipcap-transformer",
            Architecture::Decap => "decap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Int8,
}

/// Sizes the engine needs before it runs anything; checked against the graphs at load time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDims {
    /// Width of the CLIP image embedding (the projection dim).
    pub embed_dim: usize,
    /// Number of prefix embeddings the mapper produces.
    pub prefix_length: usize,
    /// Decoder width (GPT-2 `n_embd`).
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Rows of the decoder's output layer; token ids are below this.
    pub vocab_size: usize,
    /// Positions the decoder has embeddings for: prefix + generated tokens must fit.
    pub max_positions: usize,
    /// Width of the decoder's logits when its LM head was trimmed to the tokens a caption corpus
    /// uses (`host-tools trim-vocab`): logit i is token `output_ids[i]`. Absent: all `vocab_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_vocab_size: Option<usize>,
}

impl ModelDims {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Width of the decoder's logits.
    pub fn logits_width(&self) -> usize {
        self.output_vocab_size.unwrap_or(self.vocab_size)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// GPT-2 byte-level BPE (`vocab.json` + `merges.txt`).
    Gpt2Bpe,
    /// CLIP's BPE (`vocab.json` + `merges.txt` with `</w>` word ends), for DeCap decoders.
    ClipBpe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    pub kind: TokenizerKind,
}

/// Decoding defaults; `edgecap caption` flags override them per run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    /// Most tokens generated per caption (the reference ClipCap uses 67).
    pub max_tokens: usize,
    /// Generation stops after any of these (kept in the output, as the reference keeps '.').
    pub stop_token_ids: Vec<u32>,
    /// 1 = greedy; more = beam search ranked by mean log-probability.
    pub beam_width: usize,
}

/// DeCap's projection of the image embedding onto the support memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecapConfig {
    /// Softmax temperature τ over the similarities (DeCap: 0.01).
    pub temperature: f32,
    /// Only the k most similar memory entries contribute; 0 = all of them (DeCap's projection).
    #[serde(default)]
    pub top_k: usize,
}

/// What a file in the bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    /// ONNX: `pixel_values` [N,3,S,S] → `image_embeds` [N,E].
    ImageEncoder,
    /// ONNX: `image_embeds` [N,E] → `prefix` [N,P,D].
    Mapper,
    /// ONNX: GPT-2 decoder step with an explicit KV cache.
    Decoder,
    /// `.npy` f32 [V,D]: token embeddings, looked up by the engine (the decoder's LM head is untied).
    TokenEmbeddings,
    /// GPT-2 `vocab.json`.
    TokenizerVocab,
    /// GPT-2 `merges.txt`.
    TokenizerMerges,
    /// DeCap support memory (safetensors, see [`crate::memory`]).
    Memory,
    /// `.npy` i64 [V']: the token id of each logit of a trimmed LM head (ascending).
    OutputIds,
}

impl FileRole {
    pub const CLIPCAP: [FileRole; 6] = [
        FileRole::ImageEncoder,
        FileRole::Mapper,
        FileRole::Decoder,
        FileRole::TokenEmbeddings,
        FileRole::TokenizerVocab,
        FileRole::TokenizerMerges,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub role: FileRole,
    /// Relative to the bundle directory; plain file names only.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub architecture: Architecture,
    pub precision: Precision,
    /// Free text: where the weights came from.
    #[serde(default)]
    pub source: String,
    pub model: ModelDims,
    pub preprocess: PreprocessConfig,
    pub tokenizer: TokenizerSpec,
    pub generation: GenerationConfig,
    /// Present exactly when `architecture = "decap"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decap: Option<DecapConfig>,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn file(&self, role: FileRole) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == role)
    }

    /// Consistency checks that need no file access. Returns the first problem found.
    pub fn check(&self) -> Result<(), String> {
        let m = &self.model;
        let positive = [
            ("model.embed_dim", m.embed_dim),
            ("model.prefix_length", m.prefix_length),
            ("model.hidden_size", m.hidden_size),
            ("model.num_layers", m.num_layers),
            ("model.num_heads", m.num_heads),
            ("model.vocab_size", m.vocab_size),
            ("model.max_positions", m.max_positions),
            ("generation.max_tokens", self.generation.max_tokens),
            ("generation.beam_width", self.generation.beam_width),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !m.hidden_size.is_multiple_of(m.num_heads) {
            return Err(format!(
                "model.hidden_size {} is not divisible by model.num_heads {}",
                m.hidden_size, m.num_heads
            ));
        }
        if m.prefix_length >= m.max_positions {
            return Err(format!(
                "model.prefix_length {} leaves no room in model.max_positions {}",
                m.prefix_length, m.max_positions
            ));
        }
        if let Some(bad) = self.generation.stop_token_ids.iter().find(|&&t| t as usize >= m.vocab_size) {
            return Err(format!("generation.stop_token_ids has {bad}, outside the vocabulary of {}", m.vocab_size));
        }
        self.preprocess.validate().map_err(|e| format!("preprocess: {e}"))?;
        let is_decap = self.architecture == Architecture::Decap;
        match (&self.decap, is_decap) {
            (None, true) => return Err("a decap bundle needs a [decap] section".into()),
            (Some(_), false) => return Err(format!("[decap] section in a {} bundle", self.architecture.name())),
            (Some(d), true) if !(d.temperature > 0.0 && d.temperature.is_finite()) => {
                return Err(format!("decap.temperature must be positive, got {}", d.temperature));
            }
            _ => {}
        }
        let expected_tokenizer = if is_decap { TokenizerKind::ClipBpe } else { TokenizerKind::Gpt2Bpe };
        if self.tokenizer.kind != expected_tokenizer {
            return Err(format!(
                "tokenizer.kind {:?} does not suit a {} bundle",
                self.tokenizer.kind,
                self.architecture.name()
            ));
        }
        match m.output_vocab_size {
            Some(n) if n == 0 || n > m.vocab_size => {
                return Err(format!("model.output_vocab_size {n} must be in 1..={}", m.vocab_size));
            }
            Some(_) if self.file(FileRole::OutputIds).is_none() => {
                return Err("model.output_vocab_size needs an `output_ids` file".into());
            }
            None if self.file(FileRole::OutputIds).is_some() => {
                return Err("an `output_ids` file needs model.output_vocab_size".into());
            }
            _ => {}
        }
        let decap_roles: &[FileRole] = if is_decap { &[FileRole::Memory] } else { &[] };
        for &role in FileRole::CLIPCAP.iter().chain(decap_roles) {
            if self.file(role).is_none() {
                return Err(format!("files: no entry for role `{}`", role_name(role)));
            }
        }
        for f in &self.files {
            if f.path.is_empty() || f.path.contains(['/', '\\']) || f.path.starts_with('.') {
                return Err(format!("files: `{}` must be a plain file name inside the bundle", f.path));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("files: `{}` has a malformed sha256", f.path));
            }
        }
        Ok(())
    }
}

/// The role's name as written in `bundle.toml`.
pub fn role_name(role: FileRole) -> &'static str {
    match role {
        FileRole::ImageEncoder => "image_encoder",
        FileRole::Mapper => "mapper",
        FileRole::Decoder => "decoder",
        FileRole::TokenEmbeddings => "token_embeddings",
        FileRole::TokenizerVocab => "tokenizer_vocab",
        FileRole::TokenizerMerges => "tokenizer_merges",
        FileRole::Memory => "memory",
        FileRole::OutputIds => "output_ids",
    }
}
