//! The decoder's KV cache kept inside the plan (`edgecap_engine::kv_cache`) computes exactly
//! what the graph computes with its own `past` input and `present` output: the same logits,
//! bit for bit, over a prefix, decoding steps, a fan-out to two beams and a beam reordering.
//!
//! On an int8 bundle: in an fp32 decoder tract moves the last-position slice up into the last
//! layer's attention, which then stays unfused, so the cache stays outside there (see the
//! docs/int8.md, "Fused at load").

use std::path::Path;

use edgecap_engine::bundle::Bundle;
use edgecap_engine::graph::{self, GraphShapes};
use edgecap_engine::kv_cache;
use edgecap_engine::manifest::{FileRole, ModelDims};
use edgecap_engine::model::causal_bias;
use edgecap_tests::{export_reference, fixtures, quantize_all_int8, reference};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ndarray::Axis;

/// One decoding session over either plan.
enum Session {
    /// The graph's own cache: fed as `past`, returned as `present`.
    Outside {
        plan: Arc<TypedRunnableModel>,
        past: Tensor,
    },
    Inside(TypedSimpleState),
}

impl Session {
    /// Feeds `embeds` [batch, seq, hidden] at position `start`; returns the logits.
    fn step(&mut self, embeds: Tensor, start: usize) -> Vec<f32> {
        let seq = embeds.shape()[1];
        let positions: Vec<i64> = (start as i64..(start + seq) as i64).collect();
        let bias = Tensor::from_shape(&[seq, start + seq], &causal_bias(seq, start)).unwrap();
        let mut inputs: TVec<TValue> = tvec!(embeds.into(), tensor1(&positions).into(), bias.into());
        let mut out = match self {
            Session::Inside(state) => state.run(inputs).unwrap(),
            Session::Outside { plan, past } => {
                inputs.push(std::mem::take(past).into());
                let mut out = plan.run(inputs).unwrap();
                *past = out.pop().unwrap().into_tensor();
                out
            }
        };
        out.remove(0).to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    fn reorder(&mut self, sources: &[usize]) {
        match self {
            Session::Inside(state) => kv_cache::reorder(state, sources).unwrap(),
            Session::Outside { past, .. } => {
                *past = past.to_plain_array_view::<f32>().unwrap().select(Axis(2), sources).into_tensor()
            }
        }
    }
}

/// Distinct, reproducible embeddings of `[batch, seq, hidden]`, of GPT-2's scale.
fn embeds(batch: usize, seq: usize, hidden: usize, seed: usize) -> Tensor {
    let values: Vec<f32> =
        (0..batch * seq * hidden).map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 2003.0 - 0.5) * 0.2).collect();
    Tensor::from_shape(&[batch, seq, hidden], &values).unwrap()
}

fn check_bundle(bundle: &Path) {
    let bundle = Bundle::open(bundle).unwrap();
    let (manifest, path) = (&bundle.manifest, bundle.path(FileRole::Decoder));
    let dims: &ModelDims = &manifest.model;
    let shapes = GraphShapes::for_role(FileRole::Decoder, dims, manifest.preprocess.image_size as usize).unwrap();
    let (inside, moved) = graph::load_decoder(&path, &shapes).unwrap();
    assert!(moved, "{}: the exported decoder's cache was not moved into the plan", path.display());
    assert_eq!(inside.model().input_outlets().unwrap().len(), 3, "`past` is gone");
    assert_eq!(inside.model().output_outlets().unwrap().len(), 1, "`present` is gone");
    let outside = graph::load(&path, &shapes).unwrap();
    let empty = Tensor::zero::<f32>(&[dims.num_layers, 2, 1, dims.num_heads, 0, dims.head_dim()]).unwrap();
    let mut sessions =
        [Session::Outside { plan: outside, past: empty }, Session::Inside(TypedSimpleState::new(&inside).unwrap())];

    let (d, prefix) = (dims.hidden_size, dims.prefix_length);
    // A prefix, then enough single steps to outgrow the first capacity twice.
    let mut position = 0;
    let mut feed = |sessions: &mut [Session; 2], batch: usize, seq: usize, seed: usize| {
        let [a, b] = sessions.each_mut().map(|s| s.step(embeds(batch, seq, d, seed), position));
        assert_eq!(a, b, "logits differ after {position} positions, batch {batch}, {seq} new");
        position += seq;
    };
    feed(&mut sessions, 1, prefix, 0);
    for seed in 1..=prefix + 3 {
        feed(&mut sessions, 1, 1, seed);
    }
    // Fan out to two beams, decode, swap them, decode.
    sessions.iter_mut().for_each(|s| s.reorder(&[0, 0]));
    for seed in 100..103 {
        feed(&mut sessions, 2, 1, seed);
    }
    sessions.iter_mut().for_each(|s| s.reorder(&[1, 0]));
    for seed in 200..203 {
        feed(&mut sessions, 2, 1, seed);
    }
}

#[test]
fn cache_in_the_plan_equals_the_graphs_own_cache() {
    let dir = tempfile::tempdir().unwrap();
    check_bundle(&int8_bundle(dir.path()));
}

/// The ClipCap MLP fixture, exported and quantized all-int8 under `dir`.
fn int8_bundle(dir: &Path) -> std::path::PathBuf {
    let fp32 = export_reference(&reference("clipcap-mlp.json"), &fixtures(), &dir.join("fp32"));
    quantize_all_int8(&fp32, &dir.join("int8"));
    dir.join("int8")
}

#[test]
fn reordering_from_a_sequence_the_cache_lacks_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = int8_bundle(dir.path());
    let bundle = Bundle::open(&bundle).unwrap();
    let manifest = &bundle.manifest;
    let shapes = GraphShapes::for_role(FileRole::Decoder, &manifest.model, 224).unwrap();
    let (plan, moved) = graph::load_decoder(&bundle.path(FileRole::Decoder), &shapes).unwrap();
    assert!(moved);
    let mut session = Session::Inside(TypedSimpleState::new(&plan).unwrap());
    session.step(embeds(1, 2, manifest.model.hidden_size, 0), 0);
    let Session::Inside(state) = &mut session else { unreachable!() };
    let err = kv_cache::reorder(state, &[0, 1]).unwrap_err().to_string();
    assert!(err.contains("no sequence 1") && err.contains("holds 1"), "{err}");
}
