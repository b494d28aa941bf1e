//! Does int8 actually run faster than fp32 in tract on this machine? A benchmark, not a test.
//!
//! Builds full-size random-weight graphs with the same builders the export uses (CLIP ViT-B/32
//! image encoder; a 768-wide 6-layer GPT-2 decode step with 20 cached positions), quantizes them
//! with `host_tools::quantize` (static, calibrated on one random input; dynamic), and reports the
//! median of repeated runs for each variant, including static int8 *without* the column blocks
//! to show what tract's 4 MiB constant-folding budget costs.
//!
//! `cargo run --release -p host-tools --no-default-features --example int8_speed [-- RUNS]`
//! (`EDGECAP_THREADS=N` for N threads; default 1). Each graph is loaded as the engine loads it,
//! its fixed axes (the encoder's batch of 1) bound before optimisation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use edgecap_engine::graph::{self, Axis::Is, GraphShapes};
use edgecap_engine::manifest::{FileRole, ModelDims};
use host_tools::models::clip_vision::ClipVisionConfig;
use host_tools::models::gpt2::Gpt2Config;
use host_tools::onnx::clip_vision;
use host_tools::onnx::gpt2;
use host_tools::quantize::calibrate::Method;
use host_tools::quantize::calibrate_graph;
use host_tools::quantize::rewrite::{quantize_model, RewriteOptions, Scheme};
use host_tools::tensor::{Tensor, TensorMap};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// xorshift64*: deterministic weights without a dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self, scale: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * v - 1.0) * scale
    }

    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(|_| self.uniform(scale)).collect()).unwrap()
    }
}

fn weights(shapes: &[(String, Vec<usize>)], rng: &mut Rng) -> TensorMap {
    let mut w = TensorMap::new();
    for (name, shape) in shapes {
        let is_norm = ["layer_norm", "layrnorm", "layernorm", "ln_"].iter().any(|k| name.contains(k));
        let t = if is_norm && name.ends_with(".weight") {
            Tensor::new(shape.clone(), vec![1.0; shape.iter().product()]).unwrap()
        } else {
            rng.tensor(shape, 0.035)
        };
        w.insert(name.clone(), t);
    }
    w
}

fn clip_shapes(c: &ClipVisionConfig) -> Vec<(String, Vec<usize>)> {
    let (d, i, p) = (c.hidden_size, c.intermediate_size, c.patch_size);
    let mut s: Vec<(String, Vec<usize>)> = vec![
        ("vision_model.embeddings.class_embedding".into(), vec![d]),
        ("vision_model.embeddings.patch_embedding.weight".into(), vec![d, 3, p, p]),
        ("vision_model.embeddings.position_embedding.weight".into(), vec![c.num_positions(), d]),
        ("visual_projection.weight".into(), vec![c.projection_dim, d]),
    ];
    for n in ["pre_layrnorm", "post_layernorm"] {
        s.push((format!("vision_model.{n}.weight"), vec![d]));
        s.push((format!("vision_model.{n}.bias"), vec![d]));
    }
    for l in 0..c.num_hidden_layers {
        let pre = format!("vision_model.encoder.layers.{l}");
        for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            s.push((format!("{pre}.self_attn.{m}.weight"), vec![d, d]));
            s.push((format!("{pre}.self_attn.{m}.bias"), vec![d]));
        }
        for m in ["layer_norm1", "layer_norm2"] {
            s.push((format!("{pre}.{m}.weight"), vec![d]));
            s.push((format!("{pre}.{m}.bias"), vec![d]));
        }
        s.push((format!("{pre}.mlp.fc1.weight"), vec![i, d]));
        s.push((format!("{pre}.mlp.fc1.bias"), vec![i]));
        s.push((format!("{pre}.mlp.fc2.weight"), vec![d, i]));
        s.push((format!("{pre}.mlp.fc2.bias"), vec![d]));
    }
    s
}

fn gpt2_shapes(c: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let d = c.n_embd;
    let mut s: Vec<(String, Vec<usize>)> = vec![
        ("wpe.weight".into(), vec![c.n_positions, d]),
        ("ln_f.weight".into(), vec![d]),
        ("ln_f.bias".into(), vec![d]),
        ("lm_head.weight".into(), vec![c.vocab_size, d]),
    ];
    for l in 0..c.n_layer {
        for (m, din, dout) in
            [("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, 4 * d), ("mlp.c_proj", 4 * d, d)]
        {
            s.push((format!("h.{l}.{m}.weight"), vec![din, dout]));
            s.push((format!("h.{l}.{m}.bias"), vec![dout]));
        }
        for m in ["ln_1", "ln_2"] {
            s.push((format!("h.{l}.{m}.weight"), vec![d]));
            s.push((format!("h.{l}.{m}.bias"), vec![d]));
        }
    }
    s
}

/// Optimised exactly as the engine loads a bundle's graph (`edgecap_engine::graph`).
fn plan(model: &pb::ModelProto, shapes: &GraphShapes) -> Result<(Arc<TypedRunnableModel>, f64)> {
    let bytes = model.encode_to_vec();
    let t = Instant::now();
    let p = graph::load_bytes(&bytes, "graph", shapes)?;
    Ok((p, t.elapsed().as_secs_f64() * 1e3))
}

fn median_ms(plan: &Arc<TypedRunnableModel>, inputs: &TVec<TValue>, runs: usize) -> Result<f64> {
    plan.run(inputs.clone())?; // warm-up
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        plan.run(inputs.clone())?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

fn variants(fp32: &pb::ModelProto, calib: &TVec<TValue>, keep_float: &[&str]) -> Result<Vec<(String, pb::ModelProto)>> {
    let base = RewriteOptions { keep_float: keep_float.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    let ranges = calibrate_graph(fp32, std::slice::from_ref(calib), &base, Method::MinMax, None)?;
    let mut out = vec![("fp32".to_string(), fp32.clone())];
    out.push(("int8 static, blocks ≤1 MiB".into(), quantize_model(fp32, &ranges, &base)?.0));
    let unsplit = RewriteOptions { block_bytes: usize::MAX, ..base.clone() };
    out.push(("int8 static, unsplit".into(), quantize_model(fp32, &ranges, &unsplit)?.0));
    let dynamic = RewriteOptions { scheme: Scheme::Dynamic, ..base.clone() };
    out.push(("int8 dynamic, blocks ≤1 MiB".into(), quantize_model(fp32, &HashMap::new(), &dynamic)?.0));
    Ok(out)
}

fn report(
    title: &str,
    (fp32, shapes): (&pb::ModelProto, &GraphShapes),
    inputs: &TVec<TValue>,
    keep: &[&str],
    runs: usize,
) -> Result<()> {
    println!("{title} ({runs} runs, median)");
    let mut base = None;
    for (name, model) in variants(fp32, inputs, keep)? {
        let (p, load) = plan(&model, shapes)?;
        let ms = median_ms(&p, inputs, runs)?;
        let ratio = base.map_or(1.0, |b: f64| ms / b);
        base.get_or_insert(ms);
        let mib = model.encoded_len() as f64 / (1024.0 * 1024.0);
        println!("  {name:<30} {ms:>9.2} ms  ×{ratio:<5.2} load {load:>6.0} ms  {mib:>7.1} MiB");
    }
    Ok(())
}

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut rng = Rng(0x5eed);
    // One thread unless --threads-like EDGECAP_THREADS says otherwise: ratios, not absolute speed.
    let threads = std::env::var("EDGECAP_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    edgecap_engine::platform::set_threads(threads);
    println!("tract 0.23.9, {threads} threads");

    let clip = ClipVisionConfig::default();
    let encoder = clip_vision::build(&clip, &weights(&clip_shapes(&clip), &mut rng))?;
    let pixels = rng.tensor(&[1, 3, 224, 224], 2.0);
    let inputs = tvec!(tract_onnx::prelude::Tensor::from_shape(&pixels.shape, &pixels.data)?.into_tvalue());
    let encoder_shapes = GraphShapes {
        inputs: vec![vec![Is(1), Is(3), Is(224), Is(224)]],
        outputs: vec![vec![Is(1), Is(clip.projection_dim)]],
    };
    report("CLIP ViT-B/32 image encoder, 1 image", (&encoder, &encoder_shapes), &inputs, &[], runs)?;

    let g = Gpt2Config { n_layer: 6, ..Default::default() };
    let decoder = gpt2::build(&g, &weights(&gpt2_shapes(&g), &mut rng))?;
    let (past_len, hd) = (20, g.head_dim());
    let embeds = rng.tensor(&[1, 1, g.n_embd], 0.5);
    let past = rng.tensor(&[g.n_layer, 2, 1, g.n_head, past_len, hd], 1.0);
    let mut bias = vec![0f32; past_len + 1];
    bias[past_len] = 0.0;
    let step = tvec!(
        tract_onnx::prelude::Tensor::from_shape(&embeds.shape, &embeds.data)?.into_tvalue(),
        tract_onnx::prelude::Tensor::from_shape(&[1], &[past_len as i64])?.into_tvalue(),
        tract_onnx::prelude::Tensor::from_shape(&[1, past_len + 1], &bias)?.into_tvalue(),
        tract_onnx::prelude::Tensor::from_shape(&past.shape, &past.data)?.into_tvalue(),
    );
    let dims = ModelDims {
        embed_dim: clip.projection_dim,
        prefix_length: 10,
        hidden_size: g.n_embd,
        num_layers: g.n_layer,
        num_heads: g.n_head,
        vocab_size: g.vocab_size,
        max_positions: g.n_positions,
        output_vocab_size: None,
    };
    let decoder_shapes = GraphShapes::for_role(FileRole::Decoder, &dims, 224).expect("a graph");
    let title = "GPT-2 768×6 decode step (1 token, 20 cached), int8 LM head";
    report(title, (&decoder, &decoder_shapes), &step, &[], runs * 3)?;
    let title = "GPT-2 768×6 decode step, float LM head";
    report(title, (&decoder, &decoder_shapes), &step, &["lm_head"], runs * 3)?;
    Ok(())
}
