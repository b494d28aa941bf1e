//! The ONNX graphs written by `host_tools::onnx`, run in tract 0.23.9 against PyTorch.
//!
//! Fixtures (tiny random models, made by `fixtures/onnx/make_onnx_refs.py`): for each model
//! `<name>.safetensors` holds the weights and `<name>_io.safetensors` the inputs and the outputs
//! PyTorch computed. Every graph is saved with `onnx::save`, then loaded, optimised and run the way
//! the engine does, with symbolic batch/sequence dimensions.
//!
//! Full-size speed is measured by `cargo run --release -p host-tools --example int8_speed`, not here.

use std::path::{Path, PathBuf};

use anyhow::Result;
use host_tools::models::clip_vision::{Activation, ClipVisionConfig};
use host_tools::models::gpt2::Gpt2Config;
use host_tools::models::mapper::{infer_config, MapperKind};
use host_tools::onnx::clip_vision;
use host_tools::onnx::gpt2;
use host_tools::onnx::mapper;
use host_tools::onnx::save;
use host_tools::tensor::{Tensor, TensorMap};
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, TValue, TypedRunnableModel};

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx").join(name)
}

/// Reads an f32 safetensors file directly (the checkpoint readers live elsewhere).
fn load_tensors(name: &str) -> TensorMap {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}: {k}");
            let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (k, Tensor::new(v.shape().to_vec(), data).unwrap())
        })
        .collect()
}

fn load_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

/// Saves the graph, then loads and optimises it exactly as the engine does.
fn plan(model: &pb::ModelProto) -> Result<Arc<TypedRunnableModel>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("graph.onnx");
    save(model, &path)?;
    let plan = tract_onnx::onnx().model_for_path(&path)?.into_typed()?.into_optimized()?.into_runnable()?;
    Ok(plan)
}

fn tvalue(t: &Tensor) -> TValue {
    tract_onnx::prelude::Tensor::from_shape(&t.shape, &t.data).unwrap().into()
}

fn run(plan: &Arc<TypedRunnableModel>, inputs: Vec<TValue>) -> Vec<Tensor> {
    let out = plan.run(inputs.into_iter().collect()).unwrap();
    out.iter()
        .map(|v| {
            let view = v.to_plain_array_view::<f32>().unwrap();
            Tensor::new(view.shape().to_vec(), view.iter().copied().collect()).unwrap()
        })
        .collect()
}

/// Rows `from..to` of the first axis.
fn rows(t: &Tensor, from: usize, to: usize) -> Tensor {
    let row: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = to - from;
    Tensor::new(shape, t.data[from * row..to * row].to_vec()).unwrap()
}

fn max_abs_diff(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let diff = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("{what}: max abs diff {diff:.3e}");
    assert!(diff.is_finite() && diff < TOLERANCE, "{what}: max abs diff {diff} >= {TOLERANCE}");
    diff
}

// ---- CLIP vision -----------------------------------------------------------------------------

fn check_clip(name: &str, act: Activation) {
    let cfg = ClipVisionConfig::from_hf_config(&load_json(&format!("{name}.json"))).unwrap();
    assert_eq!(cfg.hidden_act, act);
    assert_eq!((cfg.hidden_size, cfg.num_hidden_layers, cfg.projection_dim, cfg.num_positions()), (32, 2, 16, 17));
    let plan = plan(&clip_vision::build(&cfg, &load_tensors(&format!("{name}.safetensors"))).unwrap()).unwrap();
    let io = load_tensors(&format!("{name}_io.safetensors"));
    let (pixels, want) = (io.get("pixel_values").unwrap(), io.get("image_embeds").unwrap());

    let got = run(&plan, vec![tvalue(pixels)]);
    max_abs_diff(&format!("{name} N=3"), &got[0], want);
    // The same plan with another batch size: the batch axis is symbolic.
    let got = run(&plan, vec![tvalue(&rows(pixels, 1, 2))]);
    max_abs_diff(&format!("{name} N=1"), &got[0], &rows(want, 1, 2));
}

#[test]
fn clip_vision_quick_gelu_matches_pytorch() {
    check_clip("clip_vision", Activation::QuickGelu);
}

#[test]
fn clip_vision_erf_gelu_matches_pytorch() {
    check_clip("clip_vision_gelu", Activation::Gelu);
}

#[test]
fn clip_config_reads_nested_vision_config_with_defaults() {
    let json = serde_json::json!({
        "projection_dim": 640,
        "vision_config": { "hidden_size": 1024, "num_attention_heads": 16, "patch_size": 14, "hidden_act": "gelu" }
    });
    let cfg = ClipVisionConfig::from_hf_config(&json).unwrap();
    let want = ClipVisionConfig {
        hidden_size: 1024,
        num_attention_heads: 16,
        patch_size: 14,
        projection_dim: 640,
        hidden_act: Activation::Gelu,
        ..ClipVisionConfig::default()
    };
    assert_eq!(cfg, want);
    let bad = serde_json::json!({ "vision_config": { "hidden_act": "silu" } });
    let err = ClipVisionConfig::from_hf_config(&bad).unwrap_err().to_string();
    assert!(err.contains("vision_config.hidden_act"), "{err}");
}

#[test]
fn clip_wrong_weight_shape_is_named() {
    let cfg = ClipVisionConfig::from_hf_config(&load_json("clip_vision.json")).unwrap();
    let mut w = load_tensors("clip_vision.safetensors");
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    w.insert(name, Tensor::new(vec![48, 31], vec![0.0; 48 * 31]).unwrap());
    let err = format!("{:#}", clip_vision::build(&cfg, &w).unwrap_err());
    assert!(err.contains(name) && err.contains("[48, 31]"), "{err}");

    let mut w = load_tensors("clip_vision.safetensors");
    w.remove("visual_projection.weight");
    let err = format!("{:#}", clip_vision::build(&cfg, &w).unwrap_err());
    assert!(err.contains("visual_projection.weight"), "{err}");
}

// ---- mappers -----------------------------------------------------------------------------------

fn check_mapper(name: &str) -> host_tools::models::mapper::MapperConfig {
    let w = load_tensors(&format!("{name}.safetensors"));
    let cfg = infer_config(&w, 32, "").unwrap();
    let plan = plan(&mapper::build(&cfg, &w).unwrap()).unwrap();
    let io = load_tensors(&format!("{name}_io.safetensors"));
    let (emb, want) = (io.get("image_embeds").unwrap(), io.get("prefix").unwrap());
    let got = run(&plan, vec![tvalue(emb)]);
    max_abs_diff(&format!("{name} N=3"), &got[0], want);
    let got = run(&plan, vec![tvalue(&rows(emb, 2, 3))]);
    max_abs_diff(&format!("{name} N=1"), &got[0], &rows(want, 2, 3));
    cfg
}

#[test]
fn mlp_mapper_matches_pytorch() {
    let cfg = check_mapper("mapper_mlp");
    assert_eq!((cfg.kind, cfg.embed_dim, cfg.hidden_size, cfg.prefix_length), (MapperKind::Mlp, 16, 32, 4));
}

#[test]
fn transformer_mapper_matches_pytorch() {
    let cfg = check_mapper("mapper_transformer");
    assert_eq!(cfg.kind, MapperKind::Transformer);
    assert_eq!((cfg.embed_dim, cfg.prefix_length, cfg.clip_length, cfg.num_layers, cfg.num_heads), (16, 4, 3, 2, 8));
}

#[test]
fn mapper_key_errors_name_the_tensor() {
    let mut w = load_tensors("mapper_transformer.safetensors");
    w.insert("transformer.layers.1.attn.extra", Tensor::new(vec![1], vec![0.0]).unwrap());
    let err = infer_config(&w, 32, "").unwrap_err().to_string();
    assert!(err.contains("transformer.layers.1.attn.extra"), "{err}");

    let mut w = load_tensors("mapper_transformer.safetensors");
    w.remove("transformer.layers.0.norm2.bias");
    let err = infer_config(&w, 32, "").unwrap_err().to_string();
    assert!(err.contains("transformer.layers.0.norm2.bias"), "{err}");

    let mut w = load_tensors("mapper_mlp.safetensors");
    let cfg = infer_config(&w, 32, "").unwrap();
    w.insert("model.2.bias", Tensor::new(vec![127], vec![0.0; 127]).unwrap());
    let err = format!("{:#}", mapper::build(&cfg, &w).unwrap_err());
    assert!(err.contains("model.2.bias"), "{err}");

    // A width that does not divide the output is refused rather than guessed.
    let err = infer_config(&load_tensors("mapper_mlp.safetensors"), 48, "").unwrap_err().to_string();
    assert!(err.contains("model.2.weight"), "{err}");
}

// ---- GPT-2 -------------------------------------------------------------------------------------

struct Gpt2Fixture {
    cfg: Gpt2Config,
    plan: Arc<TypedRunnableModel>,
    embeds: Tensor,  // [B, 7, D]
    logits: Tensor,  // [B, 7, V]
    present: Tensor, // [L, 2, B, H, 7, hd]
}

fn gpt2_fixture() -> Gpt2Fixture {
    let cfg = Gpt2Config::from_hf_config(&load_json("gpt2.json")).unwrap();
    assert_eq!((cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.vocab_size, cfg.n_positions), (32, 2, 4, 50, 32));
    let plan = plan(&gpt2::build(&cfg, &load_tensors("gpt2.safetensors")).unwrap()).unwrap();
    let io = load_tensors("gpt2_io.safetensors");
    let get = |n: &str| io.get(n).unwrap().clone();
    Gpt2Fixture { cfg, plan, embeds: get("inputs_embeds"), logits: get("logits"), present: get("present") }
}

/// One decoder call on positions `from..to` of the fixture's sequence, with `past` covering
/// `0..from`. Returns (logits [B, V], present).
fn decode(f: &Gpt2Fixture, embeds: &Tensor, past: &Tensor, from: usize, to: usize) -> (Tensor, Tensor) {
    let (b, d, s) = (embeds.shape[0], f.cfg.n_embd, to - from);
    let t_full = embeds.shape[1];
    let mut new = Vec::with_capacity(b * s * d);
    for beam in 0..b {
        let start = (beam * t_full + from) * d;
        new.extend_from_slice(&embeds.data[start..start + s * d]);
    }
    let new = Tensor::new(vec![b, s, d], new).unwrap();
    let positions: Vec<i64> = (from as i64..to as i64).collect();
    // Causal within the new positions, full on the past.
    let mut bias = vec![0f32; s * to];
    for i in 0..s {
        for j in from + i + 1..to {
            bias[i * to + j] = f32::NEG_INFINITY;
        }
    }
    let inputs = vec![
        tvalue(&new),
        tract_onnx::prelude::Tensor::from_shape(&[s], &positions).unwrap().into(),
        tvalue(&Tensor::new(vec![s, to], bias).unwrap()),
        tvalue(past),
    ];
    let mut out = run(&f.plan, inputs);
    let present = out.pop().unwrap();
    (out.pop().unwrap(), present)
}

fn empty_past(cfg: &Gpt2Config, b: usize) -> Tensor {
    Tensor::new(vec![cfg.n_layer, 2, b, cfg.n_head, 0, cfg.head_dim()], vec![]).unwrap()
}

/// Logits of position `pos` for every beam, [B, V], from PyTorch's [B, T, V].
fn ref_logits(f: &Gpt2Fixture, pos: usize) -> Tensor {
    let (b, t, v) = (f.logits.shape[0], f.logits.shape[1], f.logits.shape[2]);
    let data = (0..b).flat_map(|beam| f.logits.data[(beam * t + pos) * v..(beam * t + pos + 1) * v].to_vec()).collect();
    Tensor::new(vec![b, v], data).unwrap()
}

/// The cache of positions `0..len` from PyTorch's [L, 2, B, H, T, hd].
fn ref_present(f: &Gpt2Fixture, len: usize) -> Tensor {
    let s = &f.present.shape;
    let (t, hd) = (s[4], s[5]);
    let outer: usize = s[..4].iter().product();
    let data = (0..outer).flat_map(|o| f.present.data[o * t * hd..(o * t + len) * hd].to_vec()).collect();
    Tensor::new(vec![s[0], s[1], s[2], s[3], len, hd], data).unwrap()
}

#[test]
fn gpt2_one_call_matches_pytorch() {
    let f = gpt2_fixture();
    let (logits, present) = decode(&f, &f.embeds, &empty_past(&f.cfg, 2), 0, 7);
    max_abs_diff("gpt2 logits, 7 positions, P=0", &logits, &ref_logits(&f, 6));
    max_abs_diff("gpt2 present, 7 positions", &present, &f.present);
}

#[test]
fn gpt2_kv_cache_steps_match_one_call() {
    let f = gpt2_fixture();
    let (whole, whole_present) = decode(&f, &f.embeds, &empty_past(&f.cfg, 2), 0, 7);

    // Prefix of 3 positions with an empty past, then 2, then one token at a time, two beams.
    let mut past = empty_past(&f.cfg, 2);
    let mut last = None;
    for (from, to) in [(0, 3), (3, 5), (5, 6), (6, 7)] {
        let (logits, present) = decode(&f, &f.embeds, &past, from, to);
        max_abs_diff(&format!("gpt2 logits after step {from}..{to}"), &logits, &ref_logits(&f, to - 1));
        max_abs_diff(&format!("gpt2 present after step {from}..{to}"), &present, &ref_present(&f, to));
        past = present;
        last = Some(logits);
    }
    max_abs_diff("gpt2 stepped vs one call, logits", &last.unwrap(), &whole);
    max_abs_diff("gpt2 stepped vs one call, present", &past, &whole_present);
}

#[test]
fn gpt2_single_beam_single_token_first_step() {
    let f = gpt2_fixture();
    let beam1 = rows(&f.embeds, 1, 2);
    let (logits, present) = decode(&f, &beam1, &empty_past(&f.cfg, 1), 0, 1);
    assert_eq!(present.shape, vec![2, 2, 1, 4, 1, 8]);
    max_abs_diff("gpt2 B=1 S=1 P=0 logits", &logits, &rows(&ref_logits(&f, 0), 1, 2));
}

#[test]
fn gpt2_config_and_weight_errors() {
    let mut json = load_json("gpt2.json");
    json["activation_function"] = "relu".into();
    let err = Gpt2Config::from_hf_config(&json).unwrap_err().to_string();
    assert!(err.contains("activation_function"), "{err}");

    let defaults = Gpt2Config::from_hf_config(&serde_json::json!({})).unwrap();
    assert_eq!(defaults, Gpt2Config::default());

    let cfg = Gpt2Config::from_hf_config(&load_json("gpt2.json")).unwrap();
    let mut w = load_tensors("gpt2.safetensors");
    // An nn.Linear layout ([out, in]) where GPT-2's Conv1D wants [in, out].
    let name = "h.1.mlp.c_fc.weight";
    w.insert(name, Tensor::new(vec![128, 32], vec![0.0; 128 * 32]).unwrap());
    let err = format!("{:#}", gpt2::build(&cfg, &w).unwrap_err());
    assert!(err.contains(name) && err.contains("[32, 128]"), "{err}");
}

#[test]
fn save_replaces_the_file_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, b"old").unwrap();
    let w = load_tensors("mapper_mlp.safetensors");
    let model = mapper::build(&infer_config(&w, 32, "").unwrap(), &w).unwrap();
    save(&model, &path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.onnx")]);
    let back = <pb::ModelProto as prost::Message>::decode(&std::fs::read(&path).unwrap()[..]).unwrap();
    assert_eq!((back.ir_version, back.opset_import[0].version), (8, 17));
    assert_eq!(back.producer_name, "edgecap host-tools");
    let err = format!("{:#}", save(&model, &dir.path().join("missing/m.onnx")).unwrap_err());
    assert!(err.contains("missing/m.onnx"), "{err}");
}
