//! `host-tools export`: users' weights (HF CLIP + ClipCap checkpoint + GPT-2) → an fp32 bundle.
//!
//! Reads only files (no hub, no Python), checks every tensor against the architecture the keys
//! describe, writes three ONNX graphs, the token-embedding table and the tokenizer, then the
//! manifest last. The new bundle is loaded back with the engine before export reports success.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::BundleWriter;
use edgecap_engine::manifest::{
    Architecture, FileRole, GenerationConfig, Manifest, ModelDims, Precision, TokenizerKind, TokenizerSpec,
    FORMAT_VERSION,
};
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy;
use edgecap_engine::preprocess::PreprocessConfig;
use edgecap_engine::tokenizer::Gpt2Tokenizer;
use prost::Message;
use tract_onnx::pb;

use crate::checkpoint;
use crate::models::clip_vision::ClipVisionConfig;
use crate::models::gpt2::Gpt2Config;
use crate::models::mapper::MapperKind;
use crate::onnx::clip_vision;
use crate::onnx::gpt2;
use crate::onnx::mapper;
use crate::progress::Steps;
use crate::tensor::{Tensor, TensorMap};

/// The reference ClipCap decoding defaults: at most 67 tokens, greedy, stop at '.'.
pub const CLIPCAP_MAX_TOKENS: usize = 67;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// HF CLIP directory (`config.json` + weights).
    pub clip: PathBuf,
    /// ClipCap checkpoint (`torch.save(model.state_dict())`).
    pub clipcap: PathBuf,
    /// HF GPT-2 directory: its config always applies; its weights when the checkpoint has no `gpt.*`.
    pub lm: Option<PathBuf>,
    /// Directory with `vocab.json` + `merges.txt` or `tokenizer.json`; defaults to `lm`.
    pub tokenizer: Option<PathBuf>,
    /// GPT-2 heads when no config says (default: hidden / 64).
    pub heads: Option<usize>,
    pub out: PathBuf,
    pub progress: bool,
}

/// Exports a ClipCap bundle; returns the manifest written.
pub fn export_clipcap(opts: &ExportOptions) -> Result<Manifest> {
    let steps = Steps::new(opts.progress, "export", 7);

    steps.next("reading CLIP");
    let (vision_cfg, clip_weights) = read_clip_vision(&opts.clip)?;

    steps.next("reading ClipCap checkpoint");
    let ckpt = checkpoint::read_tensors(&opts.clipcap)?;
    let shown = opts.clipcap.display().to_string();
    check_top_level_keys(&ckpt).with_context(|| shown.clone())?;
    let mapper_weights = ckpt.strip_prefix("clip_project.");

    steps.next("reading GPT-2");
    let lm_weights = read_lm_weights(&ckpt, opts).with_context(|| format!("{shown}: GPT-2 weights"))?;
    // The mapper's keys are checked before the GPT-2 config is worked out: a checkpoint with a
    // broken mapper should be reported as such, whatever else is wrong with it.
    let lm_width = lm_weights.get("wte.weight")?.shape.last().copied().unwrap_or(0);
    let mapper_cfg = crate::models::mapper::infer_config(&mapper_weights, lm_width, "clip_project.")
        .with_context(|| format!("{shown}: mapping network"))?;
    let lm_cfg = lm_config(&lm_weights, opts).with_context(|| format!("{shown}: GPT-2 weights"))?;
    if mapper_cfg.embed_dim != vision_cfg.projection_dim {
        bail!(
            "{shown}: the mapper takes {}-wide CLIP embeddings but {} projects to {}",
            mapper_cfg.embed_dim,
            opts.clip.display(),
            vision_cfg.projection_dim
        );
    }
    let tokenizer_dir = opts
        .tokenizer
        .clone()
        .or_else(|| opts.lm.clone())
        .context("no tokenizer: pass --tokenizer DIR (GPT-2 vocab.json + merges.txt, or tokenizer.json)")?;
    let (vocab_json, merges_txt) = read_tokenizer_files(&tokenizer_dir)?;

    steps.next("building image encoder graph");
    let encoder = clip_vision::build(&vision_cfg, &clip_weights)
        .with_context(|| format!("{}: CLIP vision tower", opts.clip.display()))?;
    steps.next("building mapper graph");
    let mapper_graph =
        mapper::build(&mapper_cfg, &mapper_weights).with_context(|| format!("{shown}: mapping network"))?;
    steps.next("building decoder graph");
    let decoder = gpt2::build(&lm_cfg, &lm_weights).context("GPT-2 decoder")?;
    let wte = lm_weights.get_shaped("wte.weight", &[lm_cfg.vocab_size, lm_cfg.n_embd])?;

    steps.next("writing bundle");
    let mut writer = create_writer(&opts.out)?;
    add_graphs(&mut writer, &opts.out, &Graphs { encoder, mapper: mapper_graph, decoder, wte })?;
    let write_err = || format!("{}: cannot write bundle", opts.out.display());
    writer.add(FileRole::TokenizerVocab, "vocab.json", &vocab_json).with_context(write_err)?;
    writer.add(FileRole::TokenizerMerges, "merges.txt", &merges_txt).with_context(write_err)?;

    let tokenizer = Gpt2Tokenizer::from_files(&writer.dir().join("vocab.json"), &writer.dir().join("merges.txt"))?;
    if tokenizer.vocab_size() < lm_cfg.vocab_size {
        bail!(
            "{}: tokenizer has {} tokens but the decoder predicts {}",
            tokenizer_dir.display(),
            tokenizer.vocab_size(),
            lm_cfg.vocab_size
        );
    }
    let stop = tokenizer.token_to_id(".").context("tokenizer has no '.' token to stop on")?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        architecture: match mapper_cfg.kind {
            MapperKind::Mlp => Architecture::ClipcapMlp,
            MapperKind::Transformer => Architecture::ClipcapTransformer,
        },
        precision: Precision::Fp32,
        source: format!("exported by host-tools {} from {}", env!("CARGO_PKG_VERSION"), file_name(&opts.clipcap)),
        model: dims(vision_cfg.projection_dim, mapper_cfg.prefix_length, &lm_cfg),
        preprocess: PreprocessConfig { image_size: vision_cfg.image_size as u32, ..clip_preprocess(&opts.clip)? },
        tokenizer: TokenizerSpec { kind: TokenizerKind::Gpt2Bpe },
        generation: GenerationConfig {
            max_tokens: CLIPCAP_MAX_TOKENS.min(lm_cfg.n_positions - mapper_cfg.prefix_length),
            stop_token_ids: vec![stop],
            beam_width: 1,
        },
        decap: None,
        files: Vec::new(),
    };
    finish(writer, manifest, &opts.out, steps)
}

/// What every bundle holds besides its tokenizer (and DeCap's memory), as an exporter built it.
pub(crate) struct Graphs<'a> {
    pub encoder: pb::ModelProto,
    pub mapper: pb::ModelProto,
    pub decoder: pb::ModelProto,
    /// `[vocab, hidden]`.
    pub wte: &'a Tensor,
}

/// A bundle directory being written at `out`.
pub(crate) fn create_writer(out: &Path) -> Result<BundleWriter> {
    BundleWriter::create(out).with_context(|| format!("{}: cannot create bundle", out.display()))
}

/// Adds the three graphs and the token table under the names every bundle uses.
pub(crate) fn add_graphs(writer: &mut BundleWriter, out: &Path, graphs: &Graphs) -> Result<()> {
    let write_err = || format!("{}: cannot write bundle", out.display());
    writer
        .add(FileRole::ImageEncoder, "image_encoder.onnx", &graphs.encoder.encode_to_vec())
        .with_context(write_err)?;
    writer.add(FileRole::Mapper, "mapper.onnx", &graphs.mapper.encode_to_vec()).with_context(write_err)?;
    writer.add(FileRole::Decoder, "decoder.onnx", &graphs.decoder.encode_to_vec()).with_context(write_err)?;
    let wte = npy::to_bytes(&graphs.wte.shape, &graphs.wte.data);
    writer.add(FileRole::TokenEmbeddings, "token_embeddings.npy", &wte).with_context(write_err)
}

/// The manifest's dimensions of a model whose decoder is `lm`.
pub(crate) fn dims(embed_dim: usize, prefix_length: usize, lm: &Gpt2Config) -> ModelDims {
    ModelDims {
        embed_dim,
        prefix_length,
        hidden_size: lm.n_embd,
        num_layers: lm.n_layer,
        num_heads: lm.n_head,
        vocab_size: lm.vocab_size,
        max_positions: lm.n_positions,
        output_vocab_size: None,
    }
}

/// Writes the manifest (with the files' hashes), then loads the bundle as the device will: an
/// export that does not load is an error here, not on the board. Returns the manifest loaded.
pub(crate) fn finish(writer: BundleWriter, manifest: Manifest, out: &Path, steps: Steps) -> Result<Manifest> {
    let path = writer.finish(manifest)?;
    steps.finish();
    let model = CaptionModel::load(out).with_context(|| format!("{}: the new bundle does not load", out.display()))?;
    log::info!("wrote {}", path.display());
    Ok(model.manifest)
}

/// The vision config and all weights of an HF CLIP directory.
pub(crate) fn read_clip_vision(clip: &Path) -> Result<(ClipVisionConfig, TensorMap)> {
    let clip_config = read_json(&clip.join("config.json"))?;
    let vision_cfg = ClipVisionConfig::from_hf_config(&clip_config)
        .with_context(|| format!("{}: unusable CLIP config", clip.join("config.json").display()))?;
    Ok((vision_cfg, checkpoint::read_hf_dir(clip)?))
}

/// Every key of a ClipCap checkpoint belongs to the mapper or the language model.
fn check_top_level_keys(ckpt: &TensorMap) -> Result<()> {
    if let Some(bad) = ckpt.names().find(|k| !k.starts_with("clip_project.") && !k.starts_with("gpt.")) {
        bail!("unexpected key `{bad}` (a ClipCap checkpoint holds only clip_project.* and gpt.*)");
    }
    if !ckpt.names().any(|k| k.starts_with("clip_project.")) {
        bail!("no clip_project.* keys: not a ClipCap checkpoint");
    }
    Ok(())
}

/// GPT-2 weights (names relative to `transformer.`, plus `lm_head.weight`): the checkpoint's
/// fine-tuned `gpt.*` when present, else the frozen model from `--lm`.
fn read_lm_weights(ckpt: &TensorMap, opts: &ExportOptions) -> Result<TensorMap> {
    let in_ckpt = ckpt.names().any(|k| k.starts_with("gpt."));
    let raw = match (&opts.lm, in_ckpt) {
        (_, true) => {
            if let Some(lm) = &opts.lm {
                log::info!(
                    "using the checkpoint's GPT-2 weights (fine-tuned); {} supplies only its config",
                    lm.display()
                );
            }
            ckpt.strip_prefix("gpt.")
        }
        (Some(lm), false) => checkpoint::read_hf_dir(lm)?,
        (None, false) => bail!("the checkpoint has no gpt.* weights: pass the frozen GPT-2 with --lm DIR"),
    };
    normalise_gpt2_names(raw)
}

/// The GPT-2 config: `--lm`'s `config.json` when given, else inferred from the shapes.
fn lm_config(weights: &TensorMap, opts: &ExportOptions) -> Result<Gpt2Config> {
    let config = match &opts.lm {
        Some(lm) => {
            let path = lm.join("config.json");
            Gpt2Config::from_hf_config(&read_json(&path)?)
                .with_context(|| format!("{}: unusable GPT-2 config", path.display()))?
        }
        None => infer_gpt2_config(weights, opts.heads)?,
    };
    check_gpt2_keys(weights, &config)?;
    Ok(config)
}

/// Accepts `GPT2LMHeadModel` (`transformer.*` + `lm_head.weight`) and `GPT2Model` (bare) names;
/// drops the stale attention-mask buffers old transformers versions saved; unties the LM head.
pub(crate) fn normalise_gpt2_names(raw: TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (name, t) in raw.iter() {
        let name = name.strip_prefix("transformer.").unwrap_or(name);
        if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
            continue;
        }
        out.insert(name, t.clone());
    }
    if !out.contains("lm_head.weight") {
        let wte = out.get("wte.weight")?.clone();
        out.insert("lm_head.weight", wte);
    }
    Ok(out)
}

pub(crate) fn infer_gpt2_config(w: &TensorMap, heads: Option<usize>) -> Result<Gpt2Config> {
    let wte = w.get("wte.weight")?;
    let wpe = w.get("wpe.weight")?;
    let (&[vocab_size, n_embd], &[n_positions, _]) = (&wte.shape[..], &wpe.shape[..]) else {
        bail!("wte/wpe must be 2-D, got {:?} and {:?}", wte.shape, wpe.shape);
    };
    let n_layer = w
        .names()
        .filter_map(|k| k.strip_prefix("h.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let n_head = heads.unwrap_or(n_embd / 64);
    if n_head == 0 || n_embd % n_head != 0 {
        bail!("cannot split width {n_embd} into heads (pass --heads N or --lm DIR with a config.json)");
    }
    Ok(Gpt2Config { n_embd, n_layer, n_head, vocab_size, n_positions, layer_norm_epsilon: 1e-5 })
}

/// Refuses unknown tensors: they mean a different architecture, not something to drop silently.
pub(crate) fn check_gpt2_keys(w: &TensorMap, cfg: &Gpt2Config) -> Result<()> {
    let mut expected: Vec<String> =
        ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"].map(String::from).to_vec();
    for i in 0..cfg.n_layer {
        for part in ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"] {
            expected.push(format!("h.{i}.{part}.weight"));
            expected.push(format!("h.{i}.{part}.bias"));
        }
    }
    if let Some(bad) = w.names().find(|k| !expected.iter().any(|e| e == k)) {
        bail!("unexpected GPT-2 tensor `{bad}` for a {}-layer GPT-2", cfg.n_layer);
    }
    if let Some(missing) = expected.iter().find(|e| !w.contains(e)) {
        bail!("missing GPT-2 tensor `{missing}`");
    }
    Ok(())
}

/// GPT-2 tokenizer files from `dir`: `vocab.json` + `merges.txt`, or converted from `tokenizer.json`.
fn read_tokenizer_files(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab.is_file() && merges.is_file() {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()));
        return Ok((read(&vocab)?, read(&merges)?));
    }
    let tj = dir.join("tokenizer.json");
    if !tj.is_file() {
        bail!("{}: no tokenizer (expected vocab.json + merges.txt or tokenizer.json)", dir.display());
    }
    // Validate with the engine's reader first, then store it in the bundle's vocab + merges form.
    Gpt2Tokenizer::from_tokenizer_json(&tj)?;
    let v = read_json(&tj)?;
    let vocab = v.pointer("/model/vocab").filter(|x| x.is_object()).context("tokenizer.json: no model.vocab")?;
    let merges = v.pointer("/model/merges").and_then(|m| m.as_array()).context("tokenizer.json: no model.merges")?;
    let mut merges_txt = String::from("#version: 0.2\n");
    for m in merges {
        match (m.as_str(), m.as_array()) {
            (Some(line), _) => merges_txt.push_str(line),
            (None, Some(pair)) if pair.len() == 2 => {
                let part = |i: usize| pair[i].as_str().unwrap_or_default();
                merges_txt.push_str(&format!("{} {}", part(0), part(1)));
            }
            _ => bail!("{}: malformed merge {m}", tj.display()),
        }
        merges_txt.push('\n');
    }
    Ok((serde_json::to_vec(vocab)?, merges_txt.into_bytes()))
}

/// Preprocessing from the CLIP directory's `preprocessor_config.json` when present, else CLIP's.
pub(crate) fn clip_preprocess(clip_dir: &Path) -> Result<PreprocessConfig> {
    let path = clip_dir.join("preprocessor_config.json");
    let mut cfg = PreprocessConfig::default();
    if !path.is_file() {
        return Ok(cfg);
    }
    let v = read_json(&path)?;
    let floats3 = |key: &str| -> Option<[f32; 3]> {
        let a = v.get(key)?.as_array()?;
        (a.len() == 3).then(|| [0, 1, 2].map(|i| a[i].as_f64().unwrap_or(f64::NAN) as f32))
    };
    if let Some(m) = floats3("image_mean") {
        cfg.mean = m;
    }
    if let Some(s) = floats3("image_std") {
        cfg.std = s;
    }
    if let Some(e) = v.pointer("/size/shortest_edge").and_then(|e| e.as_u64()) {
        cfg.shortest_edge = e as u32;
    }
    // The crop is the vision tower's input size; exporters set it from the model's config too.
    let crop = v.pointer("/crop_size/height").or_else(|| v.get("crop_size")).and_then(|c| c.as_u64());
    if let Some(c) = crop {
        cfg.image_size = c as u32;
    }
    if let Some(r) = v.get("rescale_factor").and_then(|r| r.as_f64()) {
        cfg.rescale = r as f32;
    }
    cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(cfg)
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
