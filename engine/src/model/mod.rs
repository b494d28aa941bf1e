//! The loaded captioning model: three optimised tract plans and the token-embedding table.
//!
//! A [`CaptionModel`] is immutable once loaded and can be shared between threads; all per-caption
//! state (the decoder's KV cache) lives in a `session::DecoderState`, which borrows the model.

pub mod caption;

use std::path::Path;

use tract_onnx::prelude::*;

use crate::error::EngineError;
use crate::format::bundle::Bundle;
use crate::format::manifest::{FileRole, Manifest, ModelDims};
use crate::format::npy::{self, f16};
use crate::graph::{self, GraphShapes, Plan};
use crate::kv_cache::Cache;
use crate::memory::SupportMemory;
use crate::tokenizer::TextTokenizer;

pub struct CaptionModel {
    pub manifest: Manifest,
    image_encoder: Plan,
    mapper: Plan,
    decoder: Plan,
    /// Whether the decoder plan keeps its KV cache itself ([`crate::kv_cache`]).
    decoder_cache_inside: bool,
    /// The decoder's input embeddings, looked up here rather than in the graph so that the
    /// graph's LM head is an untied matrix tract can pack once.
    token_embeddings: TokenTable,
    pub tokenizer: TextTokenizer,
    /// DeCap's support memory (DeCap bundles only).
    pub memory: Option<SupportMemory>,
    /// A trimmed LM head's token ids, one per logit (ascending); `None`: logit i is token i.
    output_ids: Option<Vec<u32>>,
}

impl CaptionModel {
    /// Opens, verifies and loads the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<CaptionModel, EngineError> {
        crate::stage::edgecap_stage_load();
        let bundle = Bundle::read(dir)?;
        // The files are hashed on other threads while this one parses them, which hides the
        // hashing in start-up. A damaged file is still reported as damaged, ahead of whatever
        // its parse made of it, and no model comes out of a bundle that fails verification.
        std::thread::scope(|s| {
            let verified = s.spawn(|| bundle.verify());
            let model = CaptionModel::from_bundle(&bundle);
            verified.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            model
        })
        .inspect(|_| crate::stage::edgecap_stage_loaded())
    }

    pub fn from_bundle(bundle: &Bundle) -> Result<CaptionModel, EngineError> {
        let m = &bundle.manifest;
        let dims = &m.model;
        let shapes = |role| {
            GraphShapes::for_role(role, dims, m.preprocess.image_size as usize)
                .ok_or_else(|| EngineError::Option(format!("{role:?} is not a graph")))
        };
        let load = |role| -> Result<Plan, EngineError> {
            let shapes = shapes(role)?;
            logged(&format!("{role:?}"), || graph::load(&bundle.path(role), &shapes))
        };
        // One graph at a time: parsing holds the file's pages and its decoded weights at once,
        // and side by side the graphs raised the peak by ~100 MB for no gain on a 2-core x86.
        // The largest transient goes first, while nothing else is resident: the peak is then the
        // resident model so far plus one graph's transient. Measured on the ViT-B/32 + distilgpt2
        // int8 bundle: the encoder's transient (~107 MB) is larger than the decoder's (~72 MB,
        // whose LM head reaches its operator without a tract tensor, see `int8::parse`).
        let image_encoder = load(FileRole::ImageEncoder)?;
        crate::stage::edgecap_stage_load_decoder();
        let decoder_shapes = shapes(FileRole::Decoder)?;
        let (decoder, decoder_cache_inside) =
            logged("Decoder", || graph::load_decoder(&bundle.path(FileRole::Decoder), &decoder_shapes))?;
        crate::stage::edgecap_stage_load_mapper();
        let mapper = load(FileRole::Mapper)?;
        crate::stage::edgecap_stage_load_rest();
        let token_embeddings =
            logged("token embeddings", || load_token_embeddings(&bundle.path(FileRole::TokenEmbeddings), dims))?;
        let tokenizer = logged("tokenizer", || {
            TextTokenizer::from_files(
                m.tokenizer.kind,
                &bundle.path(FileRole::TokenizerVocab),
                &bundle.path(FileRole::TokenizerMerges),
            )
        })?;
        let memory = match m.file(FileRole::Memory) {
            Some(_) => Some(load_memory(&bundle.path(FileRole::Memory), dims)?),
            None => None,
        };
        let output_ids = match m.file(FileRole::OutputIds) {
            Some(_) => Some(load_output_ids(&bundle.path(FileRole::OutputIds), m)?),
            None => None,
        };
        crate::platform::release_free_memory();
        Ok(CaptionModel {
            manifest: m.clone(),
            image_encoder,
            mapper,
            decoder,
            decoder_cache_inside,
            token_embeddings,
            tokenizer,
            memory,
            output_ids,
        })
    }

    pub fn dims(&self) -> &ModelDims {
        &self.manifest.model
    }

    /// CLIP image embedding of one preprocessed image (CHW pixel values).
    pub fn embed_image(&self, pixel_values: &[f32]) -> Result<Vec<f32>, EngineError> {
        let s = self.manifest.preprocess.image_size as usize;
        let input = tensor_from(&[1, 3, s, s], pixel_values, "image encoder")?;
        let out =
            self.image_encoder.run(tvec!(input.into())).map_err(|e| EngineError::inference("image encoder", e))?;
        to_vec(&out[0], "image encoder")
    }

    /// The mapper's prefix embeddings [prefix_length × hidden] for one image embedding.
    pub fn map_prefix(&self, image_embeds: &[f32]) -> Result<Vec<f32>, EngineError> {
        let input = tensor_from(&[1, self.dims().embed_dim], image_embeds, "mapper")?;
        let out = self.mapper.run(tvec!(input.into())).map_err(|e| EngineError::inference("mapper", e))?;
        to_vec(&out[0], "mapper")
    }

    /// The token id of logit `index` (the same number unless the LM head was trimmed).
    pub fn token_of_logit(&self, index: usize) -> u32 {
        match &self.output_ids {
            Some(ids) => ids[index],
            None => index as u32,
        }
    }

    /// Appends the input embedding of token `id` (a row of the table) to `out`.
    pub fn push_token_embedding(&self, id: u32, out: &mut Vec<f32>) -> Result<(), EngineError> {
        let d = self.dims().hidden_size;
        let rows = id as usize * d..(id as usize + 1) * d;
        let outside = || EngineError::Option(format!("token id {id} is outside the vocabulary"));
        let start = out.len();
        match &self.token_embeddings.values {
            TokenValues::F32(table) => out.extend(table.get(rows).ok_or_else(outside)?),
            TokenValues::F16(table) => out.extend(table.get(rows).ok_or_else(outside)?.map(|v| v.to_f32())),
        }
        // The table is mapped, not read, at load (a caption reads a few dozen of its rows), so its
        // values are checked as they are used: a NaN would decode to garbage without an error.
        if out[start..].iter().any(|v| !v.is_finite()) {
            return Err(EngineError::Graph {
                path: self.token_embeddings.path.clone(),
                message: format!("row {id} holds a non-finite value (NaN or infinity): the bundle is damaged"),
            });
        }
        Ok(())
    }

    /// An empty KV cache for `batch` sequences, where this model's decoder keeps it.
    pub(crate) fn new_cache(&self, batch: usize) -> Result<Cache, EngineError> {
        let err = |e| EngineError::inference("decoder", e);
        if self.decoder_cache_inside {
            return Ok(Cache::Inside { session: TypedSimpleState::new(&self.decoder).map_err(err)?, batch });
        }
        let d = self.dims();
        let shape = [d.num_layers, 2, batch, d.num_heads, 0, d.head_dim()];
        Ok(Cache::Outside(Tensor::zero::<f32>(&shape).map_err(err)?))
    }

    /// One decoder call: `embeds` [B,S,D] at positions `start..start+S`, attending to what
    /// `cache` holds (`start` positions) and adding the new ones to it. Returns the last
    /// position's logits [B,V].
    pub(crate) fn decoder_step(&self, embeds: Tensor, start: usize, cache: &mut Cache) -> Result<Tensor, EngineError> {
        let err = |e| EngineError::inference("decoder", e);
        let s = embeds.shape()[1];
        let total = start + s;
        let positions: Vec<i64> = (start as i64..total as i64).collect();
        let bias = causal_bias(s, start);
        let mut inputs = tvec!(
            embeds.into(),
            tensor_from(&[s], &positions, "decoder")?.into(),
            tensor_from(&[s, total], &bias, "decoder")?.into()
        );
        let mut out = match cache {
            Cache::Inside { session, .. } => session.run(inputs).map_err(err)?,
            Cache::Outside(past) => {
                inputs.push(std::mem::take(past).into());
                let mut out = self.decoder.run(inputs).map_err(err)?;
                let present = out.pop().ok_or_else(|| EngineError::inference("decoder", "no present output"))?;
                *past = present.into_tensor();
                out
            }
        };
        let logits = out.pop().ok_or_else(|| EngineError::inference("decoder", "no logits output"))?;
        Ok(logits.into_tensor())
    }
}

/// Runs `load`, logging its time and the memory after it: start-up, part by part
/// (`RUST_LOG=edgecap_engine=debug`).
fn logged<T>(part: &str, load: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let loaded = load();
    // The part's transient copies are freed now; trimmed here, glibc does not keep them
    // resident under the next part's (the peak is then the model so far plus one transient).
    crate::platform::release_free_memory();
    let mib = |field| crate::platform::process_memory_mib(field).map_or("?".into(), |v| format!("{v:.0}"));
    log::debug!(
        "{part} loaded in {} ms; resident {} MiB, peak {} MiB",
        started.elapsed().as_millis(),
        mib("VmRSS"),
        mib("VmHWM")
    );
    loaded
}

/// The causal attention mask for `seq` new positions after `past` cached ones, [seq, past+seq]
/// row-major: 0 where query i may attend key j (j ≤ past + i), -inf elsewhere. The decoder, the
/// CLIP text tower and teacher-forced validation all feed this as `attention_bias`.
pub fn causal_bias(seq: usize, past: usize) -> Vec<f32> {
    let total = past + seq;
    let mut bias = vec![0f32; seq * total];
    for i in 0..seq {
        bias[i * total + past + i + 1..(i + 1) * total].fill(f32::NEG_INFINITY);
    }
    bias
}

/// [vocab, hidden] row-major, mapped from the bundle's file ([`npy::NpyFile::map`]). int8
/// bundles store it in f16: half the size (77 MB for GPT-2's vocabulary), and an error of 2^-11
/// relative, far below the int8 graphs' own.
struct TokenTable {
    /// The file, for errors.
    path: String,
    values: TokenValues,
}

enum TokenValues {
    F32(npy::NpyMap<f32>),
    F16(npy::NpyMap<f16>),
}

fn load_token_embeddings(path: &Path, dims: &ModelDims) -> Result<TokenTable, EngineError> {
    let shown = path.display().to_string();
    let graph_err = |message: String| EngineError::Graph { path: shown.clone(), message };
    let npy_err = |e: npy::NpyError| graph_err(e.to_string());
    let file = npy::NpyFile::open(path).map_err(npy_err)?;
    if file.shape != [dims.vocab_size, dims.hidden_size] {
        return Err(graph_err(format!(
            "token embeddings have shape {:?}, the manifest implies [{}, {}]",
            file.shape, dims.vocab_size, dims.hidden_size
        )));
    }
    let values = match file.descr.as_str() {
        "<f2" => file.map::<f16>().map(TokenValues::F16),
        _ => file.map::<f32>().map(TokenValues::F32),
    }
    .map_err(npy_err)?;
    Ok(TokenTable { path: shown.clone(), values })
}

/// A trimmed LM head's ids: as many as its logits, ascending, inside the vocabulary, and holding
/// every stop token (or decoding could never stop).
fn load_output_ids(path: &Path, m: &crate::format::manifest::Manifest) -> Result<Vec<u32>, EngineError> {
    let shown = path.display().to_string();
    let bad = |message: String| EngineError::Graph { path: shown.clone(), message };
    let (shape, ids) = npy::read::<i64>(path).map_err(|e| bad(e.to_string()))?;
    let (width, vocab) = (m.model.logits_width(), m.model.vocab_size as i64);
    if shape != [width] {
        return Err(bad(format!("output ids have shape {shape:?}, the manifest implies [{width}]")));
    }
    if !ids.windows(2).all(|w| w[0] < w[1]) || ids.iter().any(|&id| !(0..vocab).contains(&id)) {
        return Err(bad(format!("output ids must be ascending token ids below {vocab}")));
    }
    if let Some(stop) = m.generation.stop_token_ids.iter().find(|&&t| ids.binary_search(&i64::from(t)).is_err()) {
        return Err(bad(format!("stop token {stop} is not among the output ids")));
    }
    Ok(ids.into_iter().map(|id| id as u32).collect())
}

fn load_memory(path: &Path, dims: &ModelDims) -> Result<SupportMemory, EngineError> {
    let shown = path.display().to_string();
    let memory =
        SupportMemory::read(path).map_err(|e| EngineError::Graph { path: shown.clone(), message: e.problem })?;
    if memory.dim != dims.embed_dim {
        return Err(EngineError::Graph {
            path: shown,
            message: format!("memory rows are {} wide, the image embedding is {}", memory.dim, dims.embed_dim),
        });
    }
    Ok(memory)
}

pub(crate) fn tensor_from<T: Datum + Copy>(
    shape: &[usize],
    data: &[T],
    stage: &'static str,
) -> Result<Tensor, EngineError> {
    Tensor::from_shape(shape, data).map_err(|e| EngineError::inference(stage, e))
}

/// The values of an f32 output, copied out in one go (an ndarray iterator cost ~15 instructions a
/// value on ARM: 0.75 M per decoding step for GPT-2's 50257 logits, emulated).
pub(crate) fn to_vec(value: &Tensor, stage: &'static str) -> Result<Vec<f32>, EngineError> {
    let values = value.try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec));
    values.map_err(|e| EngineError::inference(stage, e))
}
