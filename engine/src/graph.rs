//! ONNX graph → optimised tract plan, specialised to the shapes the engine feeds it.
//!
//! Every graph of a bundle is loaded here, by the device and by host-tools alike (quantize
//! times its candidates with these plans), so a speed measured on the host is the speed of the
//! plan the device runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::error::EngineError;
use crate::format::manifest::{FileRole, ModelDims};
use crate::text::collapse_whitespace;

pub type Plan = Arc<TypedRunnableModel>;

/// One axis of a graph input or output as the engine uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Varies between calls (batch of beams, sequence, cache length): left symbolic.
    Free,
    /// Always this size. A symbolic axis of the graph is bound to it before optimisation:
    /// tract 0.23.9 then plans its int8 products for the known row count, which on the CLIP
    /// image encoder is ~5x faster than the symbolic-batch plan (docs/int8.md).
    Is(usize),
}

/// The input and output shapes the engine feeds and expects for one graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphShapes {
    pub inputs: Vec<Vec<Axis>>,
    pub outputs: Vec<Vec<Axis>>,
}

impl GraphShapes {
    /// What the engine feeds each graph of a bundle with these dimensions: one image at a time
    /// through the encoder and the mapper; the decoder's batch (beams), sequence and cache length
    /// vary, so they stay symbolic. `None` for a file that is not a graph.
    pub fn for_role(role: FileRole, dims: &ModelDims, image_size: usize) -> Option<GraphShapes> {
        use Axis::{Free, Is};
        let (l, h, hd) = (Is(dims.num_layers), Is(dims.num_heads), Is(dims.head_dim()));
        let (inputs, outputs) = match role {
            FileRole::ImageEncoder => {
                (vec![vec![Is(1), Is(3), Is(image_size), Is(image_size)]], vec![vec![Is(1), Is(dims.embed_dim)]])
            }
            FileRole::Mapper => {
                (vec![vec![Is(1), Is(dims.embed_dim)]], vec![vec![Is(1), Is(dims.prefix_length), Is(dims.hidden_size)]])
            }
            FileRole::Decoder => (
                vec![
                    vec![Free, Free, Is(dims.hidden_size)],
                    vec![Free],
                    vec![Free, Free],
                    vec![l, Is(2), Free, h, Free, hd],
                ],
                vec![vec![Free, Is(dims.logits_width())], vec![l, Is(2), Free, h, Free, hd]],
            ),
            _ => return None,
        };
        Some(GraphShapes { inputs, outputs })
    }
}

/// Loads the ONNX graph at `path` into a plan for `shapes`.
pub fn load(path: &Path, shapes: &GraphShapes) -> Result<Plan, EngineError> {
    let shown = path.display().to_string();
    let (plan, _) =
        optimise(parse(path)?, shapes, false).map_err(|message| EngineError::Graph { path: shown, message })?;
    Ok(plan)
}

/// Loads a decoder graph, moving its KV cache into the plan when the graph has the decoder
/// bundles' cache plumbing ([`crate::kv_cache`]). Returns the plan and whether it did; if it
/// did, the plan has no `past` input and no `present` output, and each session of it
/// ([`TypedSimpleState`]) keeps its own cache.
pub fn load_decoder(path: &Path, shapes: &GraphShapes) -> Result<(Plan, bool), EngineError> {
    let shown = path.display().to_string();
    optimise(parse(path)?, shapes, true).map_err(|message| EngineError::Graph { path: shown, message })
}

fn parse(path: &Path) -> Result<InferenceModel, EngineError> {
    let onnx = crate::int8::onnx();
    let shown = path.display().to_string();
    // As tract's `model_for_path` does: external data lies beside the graph.
    let dir = path.parent().and_then(|d| d.to_str());
    let proto = onnx.proto_model_for_path(path).map_err(|e| tract_error(&shown, e))?;
    check_finite(&proto, &shown)?;
    crate::int8::parse::model_for_proto(&onnx, proto, dir).map_err(|e| tract_error(&shown, e))
}

/// Refuses a float initializer holding a NaN or an infinity: a damaged or forged file whose
/// hashes match (a stamp) would otherwise caption garbage without an error. One pass over the
/// floats, as `raw_data` bytes or as `float_data`.
fn check_finite(proto: &tract_onnx::pb::ModelProto, shown: &str) -> Result<(), EngineError> {
    const FLOAT: i32 = 1;
    let initializers = proto.graph.iter().flat_map(|g| &g.initializer);
    for t in initializers.filter(|t| t.data_type == FLOAT) {
        let floats = t.float_data.iter().map(|v| v.to_bits());
        if any_non_finite_le(&t.raw_data) || floats.fold(0, step) & SIGN != 0 {
            return Err(EngineError::Graph {
                path: shown.to_string(),
                message: format!("initializer {} holds a non-finite value (NaN or infinity)", t.name),
            });
        }
    }
    Ok(())
}

const SIGN: u32 = 0x8000_0000;

/// One f32 bit pattern folded in: `(bits & exponent) + one exponent step` carries into bit 31
/// exactly when the exponent is all ones (NaN or infinity), so the fold's bit 31 says whether
/// one was.
#[inline(always)]
fn step(acc: u32, bits: u32) -> u32 {
    acc | ((bits & 0x7f80_0000) + 0x0080_0000)
}

/// Whether these little-endian f32 bytes (a trailing partial value ignored) hold a NaN or an
/// infinity. Decoded buffers are word-aligned in practice and are then read as words, 16 lanes
/// OR-ed without an early exit: about 1.2 instructions a float on armv7 NEON and aarch64. The
/// byte-by-byte form, even as a fold, stayed scalar on ARM: 0.5 G (aarch64) and 2.0 G (armv7)
/// instructions of the full-size fp32 bundle's load (emulated counts).
fn any_non_finite_le(raw: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u32; `align_to` only splits the slice.
    let (head, words, _) = unsafe { raw.align_to::<u32>() };
    if head.is_empty() && cfg!(target_endian = "little") {
        return any_non_finite(words);
    }
    raw.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).fold(0, step) & SIGN != 0
}

/// Whether one of these f32 bit patterns is NaN or infinite.
fn any_non_finite(words: &[u32]) -> bool {
    let mut lanes = [0u32; 16];
    let blocks = words.chunks_exact(16);
    let rest = blocks.remainder().iter().fold(0, |acc, &b| step(acc, b));
    for block in blocks {
        for (lane, &bits) in lanes.iter_mut().zip(block) {
            *lane = step(*lane, bits);
        }
    }
    lanes.iter().fold(rest, |acc, &l| acc | l) & SIGN != 0
}

/// Loads an ONNX graph held in memory (`label` names it in errors).
pub fn load_bytes(bytes: &[u8], label: &str, shapes: &GraphShapes) -> Result<Plan, EngineError> {
    let onnx = crate::int8::onnx();
    let model = onnx
        .proto_model_for_read(&mut &bytes[..])
        .and_then(|proto| crate::int8::parse::model_for_proto(&onnx, proto, None))
        .map_err(|e| tract_error(label, e))?;
    let (plan, _) =
        optimise(model, shapes, false).map_err(|message| EngineError::Graph { path: label.to_string(), message })?;
    Ok(plan)
}

fn tract_error(label: &str, e: TractError) -> EngineError {
    EngineError::Graph { path: label.to_string(), message: collapse_whitespace(&format!("{e:#}")) }
}

/// Checks the graph's inputs against `shapes`, binds the symbols of fixed axes, checks the
/// outputs, then optimises; `cache_inside`: try `fuse::kv_cache::fuse`, and say whether it
/// applied.
fn optimise(model: InferenceModel, shapes: &GraphShapes, cache_inside: bool) -> Result<(Plan, bool), String> {
    let tract = |e: TractError| collapse_whitespace(&format!("{e:#}"));
    let model = model.into_typed().map_err(tract)?;
    let inputs = model.input_outlets().map_err(tract)?.to_vec();
    let bindings = check_facts(&model, "input", &inputs, &shapes.inputs)?;
    let model = if bindings.is_empty() { model } else { model.set_symbols(&bindings).map_err(tract)? };
    let outputs = model.output_outlets().map_err(tract)?.to_vec();
    check_facts(&model, "output", &outputs, &shapes.outputs)?;
    let mut model = model;
    crate::int8::passes::prepare(&mut model).map_err(tract)?;
    model.declutter().map_err(tract)?;
    // Fusions tract does not make, on the decluttered graph, where the patterns are settled.
    let scales = crate::int8::passes::fuse_scales(&mut model).map_err(tract)?;
    let attentions = crate::fuse::attention::fuse(&mut model).map_err(tract)?;
    let gelus = crate::fuse::gelu::fuse(&mut model).map_err(tract)?;
    let cached = cache_inside && crate::fuse::kv_cache::fuse(&mut model).map_err(tract)?;
    log::debug!(
        "fused {attentions} attentions, {gelus} GELUs and {scales} product rescales; cache in the plan: {cached}"
    );
    model.optimize().map_err(tract)?;
    Ok((model.into_runnable().map_err(tract)?, cached))
}

/// Compares each outlet's shape with what the engine uses; returns the symbol bindings that make
/// the graph's symbolic axes the sizes the engine always feeds.
fn check_facts(
    model: &TypedModel,
    kind: &str,
    outlets: &[OutletId],
    expected: &[Vec<Axis>],
) -> Result<HashMap<Symbol, TDim>, String> {
    if outlets.len() != expected.len() {
        return Err(format!("graph has {} {kind}s, expected {}", outlets.len(), expected.len()));
    }
    let mut bindings = HashMap::new();
    for (i, (outlet, want)) in outlets.iter().zip(expected).enumerate() {
        let fact = model.outlet_fact(*outlet).map_err(|e| e.to_string())?;
        let dims: Vec<TDim> = fact.shape.iter().cloned().collect();
        let mut matches = dims.len() == want.len();
        for (d, w) in dims.iter().zip(want) {
            match (d, w) {
                (_, Axis::Free) => {}
                (TDim::Sym(s), Axis::Is(n)) => {
                    // One symbol bound to two sizes (say `batch` in two inputs) is a mismatch.
                    let bound = bindings.entry(s.clone()).or_insert_with(|| TDim::from(*n as i64));
                    matches &= bound.as_i64() == Some(*n as i64);
                }
                (d, Axis::Is(n)) => matches &= d.as_i64() == Some(*n as i64),
            }
        }
        if !matches {
            let want_txt: Vec<String> = want
                .iter()
                .map(|w| match w {
                    Axis::Free => "?".to_string(),
                    Axis::Is(n) => n.to_string(),
                })
                .collect();
            return Err(format!(
                "{kind} {i} `{}` has shape {:?}, the manifest implies [{}]",
                model.node(outlet.node).name,
                dims.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                want_txt.join(", ")
            ));
        }
    }
    Ok(bindings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_floats_are_found_anywhere_and_only_they() {
        let floats = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let finite = [0.0, -0.0, 1.5, -3.0e38, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1.0e-45];
        let mut values: Vec<f32> = (0..37).map(|i| finite[i % finite.len()]).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert!(!any_non_finite(&floats(&values)));
        // Aligned, then one byte off (the byte-wise path), with a partial value at the end.
        let mut shifted = vec![0u8];
        shifted.extend(bytes(&values));
        shifted.push(0xff);
        assert!(!any_non_finite_le(&bytes(&values)) && !any_non_finite_le(&shifted[1..]));
        for at in [0, 5, 15, 16, 31, 32, 36] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0xffc0_0001)] {
                let saved = values[at];
                values[at] = bad;
                assert!(any_non_finite(&floats(&values)), "{bad} at {at}");
                let mut shifted = vec![0u8];
                shifted.extend(bytes(&values));
                assert!(any_non_finite_le(&bytes(&values)) && any_non_finite_le(&shifted[1..]), "{bad} at {at}");
                values[at] = saved;
            }
        }
    }
}
