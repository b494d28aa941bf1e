//! `host-tools trim-vocab`: cut the decoder's LM head down to the tokens a caption corpus uses.
//!
//! The LM head is the largest product of every decoding step (GPT-2: 768 × 50257, half of an
//! int8 step). Captions use a few thousand tokens; the others can never win an argmax that
//! matters. The trimmed head keeps those columns only, and the bundle's `output_ids.npy` maps
//! each logit back to its token id. Greedy decoding is unchanged whenever the full head's choice
//! is a kept token (beam search compares log-probabilities normalised over the kept tokens).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::Bundle;
use edgecap_engine::manifest::{FileRole, Precision};
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy;
use edgecap_engine::tokenizer::TextTokenizer;
use prost::Message;
use tract_onnx::pb;

use crate::quantize::rewrite::f32_values;

#[derive(Debug, Clone)]
pub struct TrimReport {
    pub kept: usize,
    pub vocab_size: usize,
    pub decoder_bytes: (u64, u64),
}

/// The token ids the decoder may produce for the captions in `corpus` (one per line): each
/// line tokenized as the bundle's tokenizer does, GPT-2 lines also with a leading space (a
/// caption's words after the first), plus the stop tokens. Reads the tokenizer only, not the
/// graphs.
pub fn corpus_ids(bundle: &Bundle, corpus: &Path) -> Result<BTreeSet<u32>> {
    let m = &bundle.manifest;
    let tokenizer = TextTokenizer::from_files(
        m.tokenizer.kind,
        &bundle.path(FileRole::TokenizerVocab),
        &bundle.path(FileRole::TokenizerMerges),
    )?;
    let text = std::fs::read_to_string(corpus).with_context(|| format!("{}: cannot read", corpus.display()))?;
    let mut ids: BTreeSet<u32> = m.generation.stop_token_ids.iter().copied().collect();
    let mut lines = 0usize;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        lines += 1;
        ids.extend(tokenizer.encode_caption(line));
        ids.extend(tokenizer.encode_caption(&format!(" {line}")));
    }
    if lines == 0 {
        bail!("{}: no captions (one per line expected)", corpus.display());
    }
    let vocab = m.model.vocab_size as u32;
    ids.retain(|&id| id < vocab);
    Ok(ids)
}

/// Writes to `out` a copy of the fp32 `bundle` whose LM head keeps the columns of `keep` only.
pub fn trim_bundle(bundle: &Bundle, out: &Path, keep: &BTreeSet<u32>) -> Result<TrimReport> {
    let shown = bundle.dir.display().to_string();
    let m = &bundle.manifest;
    if m.precision != Precision::Fp32 {
        bail!("{shown}: trim the fp32 bundle, then quantize it (this one is {:?})", m.precision);
    }
    if crate::quantize::same_dir(&bundle.dir, out) {
        bail!("{}: the output must be a new directory, not the input bundle", out.display());
    }
    if m.model.output_vocab_size.is_some() {
        bail!("{shown}: the LM head is already trimmed");
    }
    if let Some(stop) = m.generation.stop_token_ids.iter().find(|t| !keep.contains(t)) {
        bail!("the kept tokens must include the stop token {stop}");
    }
    let decoder_path = bundle.path(FileRole::Decoder);
    let bytes = std::fs::read(&decoder_path).with_context(|| format!("{}: cannot read", decoder_path.display()))?;
    let mut decoder = pb::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX model", decoder_path.display()))?;
    let keep: Vec<u32> = keep.iter().copied().collect();
    trim_lm_head(&mut decoder, &keep).with_context(|| format!("{}: cannot trim", decoder_path.display()))?;
    let trimmed = decoder.encode_to_vec();

    let mut writer = crate::export::create_writer(out)?;
    let write_err = || format!("{}: cannot write bundle", out.display());
    for entry in &m.files {
        let role = entry.role;
        if role == FileRole::Decoder {
            writer.add(role, &entry.path, &trimmed).with_context(write_err)?;
        } else {
            let data = std::fs::read(bundle.path(role)).with_context(|| format!("{}: cannot read", entry.path))?;
            writer.add(role, &entry.path, &data).with_context(write_err)?;
        }
    }
    let ids: Vec<i64> = keep.iter().map(|&id| i64::from(id)).collect();
    writer.add(FileRole::OutputIds, "output_ids.npy", &npy::to_bytes(&[ids.len()], &ids)).with_context(write_err)?;
    let mut manifest = m.clone();
    manifest.model.output_vocab_size = Some(keep.len());
    manifest.source =
        format!("{}; LM head trimmed to {} of {} tokens", manifest.source, keep.len(), m.model.vocab_size);
    writer.finish(manifest)?;
    CaptionModel::load(out).with_context(|| format!("{}: the trimmed bundle does not load", out.display()))?;
    Ok(TrimReport {
        kept: keep.len(),
        vocab_size: m.model.vocab_size,
        decoder_bytes: (bytes.len() as u64, trimmed.len() as u64),
    })
}

/// Keeps columns `keep` of the constant [D, V] weight of the `MatMul` that produces the graph's
/// `logits` output, and narrows that output's declared shape.
fn trim_lm_head(model: &mut pb::ModelProto, keep: &[u32]) -> Result<()> {
    let graph = model.graph.as_mut().context("no graph")?;
    let mut value = "logits".to_string();
    // The builder names the output with an Identity after the head's MatMul.
    let matmul = loop {
        let node = graph.node.iter().find(|n| n.output.first() == Some(&value)).context("no node makes `logits`")?;
        match node.op_type.as_str() {
            "Identity" => value = node.input[0].clone(),
            "MatMul" => break node.clone(),
            other => bail!("`logits` comes from a {other} node, not the LM head's MatMul"),
        }
    };
    let weight_name = matmul.input.get(1).context("LM head MatMul without a weight")?;
    let weight = graph
        .initializer
        .iter_mut()
        .find(|t| &t.name == weight_name)
        .with_context(|| format!("the LM head weight `{weight_name}` is not a constant"))?;
    let (rows, cols) = match weight.dims[..] {
        [r, c] => (r as usize, c as usize),
        _ => bail!("the LM head weight has shape {:?}, expected [hidden, vocab]", weight.dims),
    };
    if let Some(&bad) = keep.iter().find(|&&id| id as usize >= cols) {
        bail!("token {bad} is outside the LM head's {cols} columns");
    }
    let values = f32_values(weight)?;
    let mut raw = Vec::with_capacity(rows * keep.len() * 4);
    for r in 0..rows {
        for &c in keep {
            raw.extend_from_slice(&values[r * cols + c as usize].to_le_bytes());
        }
    }
    weight.dims = vec![rows as i64, keep.len() as i64];
    weight.raw_data = raw;
    weight.float_data.clear();
    let output = graph.output.iter_mut().find(|o| o.name == "logits").context("no `logits` output")?;
    let shape = match output.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(pb::type_proto::Value::TensorType(t)) => t.shape.as_mut().context("`logits` has no shape")?,
        _ => bail!("`logits` is not a tensor"),
    };
    let width = shape.dim.get_mut(1).context("`logits` is not [batch, vocab]")?;
    width.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(keep.len() as i64));
    Ok(())
}
