//! Runs the CLIP text tower (built by [`crate::onnx::clip_text`]) through tract: captions in,
//! `get_text_features` embeddings out. Used to build DeCap support memories.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use edgecap_engine::tokenizer::{clip_vocab_from_bpe, ClipTokenizer};
use prost::Message;
use tract_onnx::prelude::*;

use crate::checkpoint;
use crate::models::clip_text::ClipTextConfig;
use crate::onnx::clip_text;

pub struct TextEncoder {
    plan: Arc<TypedRunnableModel>,
    pub tokenizer: ClipTokenizer,
    pub config: ClipTextConfig,
}

impl TextEncoder {
    /// Loads the text tower of an HF CLIP directory; the tokenizer comes from `tokenizer` or,
    /// when `None`, from the directory's `vocab.json` + `merges.txt`.
    pub fn load(clip_dir: &Path, tokenizer: Option<&Path>) -> Result<TextEncoder> {
        let config_path = clip_dir.join("config.json");
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&config_path).with_context(|| format!("{}: cannot read", config_path.display()))?,
        )
        .with_context(|| format!("{}: invalid JSON", config_path.display()))?;
        let config = ClipTextConfig::from_hf_config(&json).with_context(|| format!("{}", config_path.display()))?;
        let weights = checkpoint::read_hf_dir(clip_dir)?;
        let graph =
            clip_text::build(&config, &weights).with_context(|| format!("{}: CLIP text tower", clip_dir.display()))?;
        let plan = optimise(&graph).with_context(|| format!("{}: CLIP text tower", clip_dir.display()))?;
        let tokenizer = load_clip_tokenizer(clip_dir, tokenizer)?;
        if tokenizer.vocab_size() > config.vocab_size {
            bail!(
                "the CLIP tokenizer has {} tokens but {} embeds only {}",
                tokenizer.vocab_size(),
                clip_dir.display(),
                config.vocab_size
            );
        }
        Ok(TextEncoder { plan, tokenizer, config })
    }

    pub fn embed_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// Embeddings [captions.len(), embed_dim], row-major, not normalised.
    pub fn embed(&self, captions: &[&str]) -> Result<Vec<f32>> {
        if captions.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u32>> = captions.iter().map(|c| self.tokenizer.encode_for_model(c)).collect();
        let s = ids.iter().map(Vec::len).max().unwrap_or(2);
        let n = ids.len();
        let end = i64::from(self.tokenizer.end_token_id());
        let mut input = vec![end; n * s]; // padded with the end token, as transformers pads
        let mut pooled = Vec::with_capacity(n);
        for (row, seq) in ids.iter().enumerate() {
            for (col, &id) in seq.iter().enumerate() {
                input[row * s + col] = i64::from(id);
            }
            pooled.push((row * s + seq.len() - 1) as i64);
        }
        let positions: Vec<i64> = (0..s as i64).collect();
        let bias = edgecap_engine::model::causal_bias(s, 0);
        let inputs = tvec!(
            Tensor::from_shape(&[n, s], &input)?.into(),
            Tensor::from_shape(&[s], &positions)?.into(),
            Tensor::from_shape(&[s, s], &bias)?.into(),
            Tensor::from_shape(&[n], &pooled)?.into()
        );
        let out = self.plan.run(inputs).context("CLIP text tower")?;
        let view = out[0].to_plain_array_view::<f32>()?;
        Ok(view.iter().copied().collect())
    }
}

fn optimise(graph: &tract_onnx::pb::ModelProto) -> Result<Arc<TypedRunnableModel>> {
    let bytes = graph.encode_to_vec();
    let model = tract_onnx::onnx().model_for_read(&mut bytes.as_slice())?;
    model.into_typed()?.into_optimized()?.into_runnable()
}

/// The CLIP BPE tokenizer from `explicit` (open_clip's `bpe_simple_vocab_16e6.txt[.gz]`, or a
/// directory with `vocab.json` + `merges.txt`), else from the CLIP directory's own files.
pub fn load_clip_tokenizer(clip_dir: &Path, explicit: Option<&Path>) -> Result<ClipTokenizer> {
    let dir = explicit.filter(|p| p.is_dir()).unwrap_or(clip_dir);
    if let Some(file) = explicit.filter(|p| !p.is_dir()) {
        let text = read_maybe_gz(file)?;
        return Ok(ClipTokenizer::from_bpe_vocab(&text, file)?);
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if !vocab.is_file() || !merges.is_file() {
        bail!(
            "{}: no CLIP tokenizer (vocab.json + merges.txt); pass --tokenizer bpe_simple_vocab_16e6.txt.gz",
            dir.display()
        );
    }
    Ok(ClipTokenizer::from_files(&vocab, &merges)?)
}

/// The CLIP tokenizer as the `vocab.json` + `merges.txt` bytes a bundle stores, from the same
/// sources as [`load_clip_tokenizer`].
pub fn clip_tokenizer_files(clip_dir: &Path, explicit: Option<&Path>) -> Result<(Vec<u8>, Vec<u8>)> {
    if let Some(file) = explicit.filter(|p| !p.is_dir()) {
        let (vocab, merges) = clip_vocab_from_bpe(&read_maybe_gz(file)?, file)?;
        return Ok((serde_json::to_vec(&vocab)?, merges.into_bytes()));
    }
    let dir = explicit.unwrap_or(clip_dir);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| {
            format!(
                "{}: cannot read (pass --tokenizer bpe_simple_vocab_16e6.txt.gz for open_clip's vocabulary)",
                p.display()
            )
        })
    };
    Ok((read("vocab.json")?, read("merges.txt")?))
}

fn read_maybe_gz(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .with_context(|| format!("{}: not a gzip-compressed UTF-8 text", path.display()))?;
    } else {
        text = String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", path.display()))?;
    }
    Ok(text)
}
