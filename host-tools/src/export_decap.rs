//! `host-tools export --decap`: HF CLIP + a DeCap checkpoint + a support memory → an fp32 bundle.
//!
//! DeCap checkpoints, as the reference code saves them, hold `clip_project.model.0.{weight,bias}`
//! (Linear embed → hidden, the one-token prefix) and `decoder.*`, a GPT-2 whose token ids are
//! CLIP's. The decoder's rows beyond CLIP's vocabulary (the released model keeps GPT-2's 50257)
//! can never be decoded, so the exporter trims the LM head and token table to the tokenizer.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::BundleWriter;
use edgecap_engine::manifest::{
    Architecture, DecapConfig, FileRole, GenerationConfig, Manifest, Precision, TokenizerKind, TokenizerSpec,
    FORMAT_VERSION,
};
use edgecap_engine::memory::SupportMemory;
use edgecap_engine::preprocess::PreprocessConfig;
use edgecap_engine::tokenizer::ClipTokenizer;

use crate::checkpoint;
use crate::export::{
    add_graphs, check_gpt2_keys, clip_preprocess, create_writer, dims, file_name, finish, infer_gpt2_config,
    normalise_gpt2_names, read_clip_vision, Graphs,
};
use crate::memory::{build_memory, MemoryOptions};
use crate::onnx::{clip_vision, gpt2, mapper};
use crate::progress::Steps;
use crate::tensor::{Tensor, TensorMap};
use crate::text_encoder::clip_tokenizer_files;

/// DeCap's decoding defaults: greedy, at most 30 tokens, stop at CLIP's end token.
pub const DECAP_MAX_TOKENS: usize = 30;
/// Heads of the released DeCap decoder; its checkpoint does not say.
pub const DECAP_DEFAULT_HEADS: usize = 4;
pub const DECAP_TEMPERATURE: f32 = 0.01;

#[derive(Debug, Clone)]
pub struct DecapExportOptions {
    pub clip: PathBuf,
    pub decap: PathBuf,
    /// A memory from `host-tools memory build`.
    pub memory: Option<PathBuf>,
    /// Or captions to build one from (f32, all lines).
    pub memory_captions: Option<PathBuf>,
    /// CLIP BPE vocabulary when the CLIP directory has none.
    pub tokenizer: Option<PathBuf>,
    pub decoder_heads: Option<usize>,
    pub temperature: f32,
    pub top_k: usize,
    pub out: PathBuf,
    pub progress: bool,
}

pub fn export_decap(opts: &DecapExportOptions) -> Result<Manifest> {
    let steps = Steps::new(opts.progress, "export", 6);
    let shown = opts.decap.display().to_string();

    steps.next("reading CLIP");
    let (vision_cfg, clip_weights) = read_clip_vision(&opts.clip)?;
    let (vocab_json, merges_txt) = clip_tokenizer_files(&opts.clip, opts.tokenizer.as_deref())?;

    steps.next("reading DeCap checkpoint");
    let ckpt = checkpoint::read_tensors(&opts.decap)?;
    if let Some(bad) = ckpt.names().find(|k| !k.starts_with("clip_project.") && !k.starts_with("decoder.")) {
        bail!("{shown}: unexpected key `{bad}` (a DeCap checkpoint holds only clip_project.* and decoder.*)");
    }
    let (projection, embed_dim, hidden) =
        mapper::build_decap(&ckpt.strip_prefix("clip_project.")).with_context(|| format!("{shown}: clip_project"))?;
    if embed_dim != vision_cfg.projection_dim {
        bail!(
            "{shown}: clip_project takes {embed_dim}-wide CLIP embeddings but {} projects to {}",
            opts.clip.display(),
            vision_cfg.projection_dim
        );
    }
    let mut lm = normalise_gpt2_names(ckpt.strip_prefix("decoder.")).with_context(|| format!("{shown}: decoder"))?;
    let heads = opts.decoder_heads.unwrap_or(DECAP_DEFAULT_HEADS);
    let mut lm_cfg = infer_gpt2_config(&lm, Some(heads)).with_context(|| format!("{shown}: decoder"))?;
    check_gpt2_keys(&lm, &lm_cfg).with_context(|| format!("{shown}: decoder"))?;
    if lm_cfg.n_embd != hidden {
        bail!("{shown}: clip_project gives {hidden}-wide prefixes but the decoder is {} wide", lm_cfg.n_embd);
    }

    steps.next("building graphs");
    let encoder = clip_vision::build(&vision_cfg, &clip_weights)
        .with_context(|| format!("{}: CLIP vision tower", opts.clip.display()))?;
    let mut writer = create_writer(&opts.out)?;
    let write_err = || format!("{}: cannot write bundle", opts.out.display());
    writer.add(FileRole::TokenizerVocab, "vocab.json", &vocab_json).with_context(write_err)?;
    writer.add(FileRole::TokenizerMerges, "merges.txt", &merges_txt).with_context(write_err)?;
    let tokenizer = ClipTokenizer::from_files(&writer.dir().join("vocab.json"), &writer.dir().join("merges.txt"))?;
    trim_vocabulary(&mut lm, &mut lm_cfg, tokenizer.vocab_size())?;
    let decoder = gpt2::build(&lm_cfg, &lm).context("DeCap decoder")?;
    let wte = lm.get_shaped("wte.weight", &[lm_cfg.vocab_size, lm_cfg.n_embd])?;

    steps.next("support memory");
    add_memory(&mut writer, opts, embed_dim)?;

    steps.next("writing bundle");
    add_graphs(&mut writer, &opts.out, &Graphs { encoder, mapper: projection, decoder, wte })?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        architecture: Architecture::Decap,
        precision: Precision::Fp32,
        source: format!("exported by host-tools {} from {}", env!("CARGO_PKG_VERSION"), file_name(&opts.decap)),
        model: dims(embed_dim, 1, &lm_cfg),
        preprocess: PreprocessConfig { image_size: vision_cfg.image_size as u32, ..clip_preprocess(&opts.clip)? },
        tokenizer: TokenizerSpec { kind: TokenizerKind::ClipBpe },
        generation: GenerationConfig {
            max_tokens: DECAP_MAX_TOKENS.min(lm_cfg.n_positions - 1),
            stop_token_ids: vec![tokenizer.end_token_id()],
            beam_width: 1,
        },
        decap: Some(DecapConfig { temperature: opts.temperature, top_k: opts.top_k }),
        files: Vec::new(),
    };
    finish(writer, manifest, &opts.out, steps)
}

/// Keeps the first `vocab` rows of the LM head and the token table: ids the tokenizer has no
/// token for can never become text.
fn trim_vocabulary(lm: &mut TensorMap, cfg: &mut crate::models::gpt2::Gpt2Config, vocab: usize) -> Result<()> {
    if cfg.vocab_size <= vocab {
        return Ok(());
    }
    for name in ["wte.weight", "lm_head.weight"] {
        let t = lm.get_shaped(name, &[cfg.vocab_size, cfg.n_embd])?;
        let trimmed = Tensor::new(vec![vocab, cfg.n_embd], t.data[..vocab * cfg.n_embd].to_vec())?;
        lm.insert(name, trimmed);
    }
    log::info!("decoder vocabulary trimmed from {} to the tokenizer's {vocab} ids", cfg.vocab_size);
    cfg.vocab_size = vocab;
    Ok(())
}

/// Puts the support memory into the bundle: a given memory file (checked), or one built from
/// captions next to the bundle and moved in.
fn add_memory(writer: &mut BundleWriter, opts: &DecapExportOptions, embed_dim: usize) -> Result<()> {
    let name = "memory.safetensors";
    let write_err = || format!("{}: cannot write bundle", opts.out.display());
    match (&opts.memory, &opts.memory_captions) {
        (Some(path), None) => {
            let memory = SupportMemory::read(path)?;
            if memory.dim != embed_dim {
                bail!(
                    "{}: memory rows are {} wide but {} embeds images in {embed_dim} dimensions (built with another CLIP?)",
                    path.display(),
                    memory.dim,
                    opts.clip.display()
                );
            }
            let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            writer.add(FileRole::Memory, name, &bytes).with_context(write_err)
        }
        (None, Some(captions)) => {
            let tmp = writer.dir().join(format!(".{name}.building"));
            let mopts = MemoryOptions {
                clip: opts.clip.clone(),
                captions: captions.clone(),
                tokenizer: opts.tokenizer.clone(),
                out: tmp.clone(),
                size: None,
                seed: 0,
                int8: false,
                batch: 64,
                progress: opts.progress,
            };
            build_memory(&mopts)?;
            writer.add_file(FileRole::Memory, name, &tmp).with_context(write_err)
        }
        _ => bail!("a DeCap export needs exactly one of --memory FILE or --memory-captions FILE"),
    }
}
