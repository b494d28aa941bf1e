//! Where an image encoding and one decoding step spend their time, operator by operator (summed
//! by operator name over 100 runs, after 2 warm-ups), for a bundle's plans as the engine loads
//! them. The decoding step is one token after 20 cached positions, with the KV cache inside the
//! plan when the engine puts it there (`graph::load_decoder`), else fed as `past`.
//!
//!     T=2 cargo run --release -p edgecap-engine --example profile_ops BUNDLE [ImageEncoder|Decoder]
//!
//! A profile, not a test: it prints and asserts nothing. `T`: threads (default 2).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use edgecap_engine::bundle::Bundle;
use edgecap_engine::graph::{self, GraphShapes};
use edgecap_engine::manifest::{FileRole, ModelDims};
use edgecap_engine::model::causal_bias;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

fn main() {
    let dir = std::env::args().nth(1).unwrap();
    edgecap_engine::platform::set_threads(std::env::var("T").map_or(2, |t| t.parse().unwrap()));
    let b = Bundle::open(Path::new(&dir)).unwrap();
    let dims = b.manifest.model.clone();
    let only = std::env::args().nth(2).unwrap_or_default();
    for role in
        [FileRole::ImageEncoder, FileRole::Decoder].into_iter().filter(|r| only.is_empty() || format!("{r:?}") == only)
    {
        let shapes = GraphShapes::for_role(role, &dims, 224).unwrap();
        let (plan, inside) = match role {
            FileRole::Decoder => graph::load_decoder(&b.path(role), &shapes).unwrap(),
            _ => (graph::load(&b.path(role), &shapes).unwrap(), false),
        };
        let mut per: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let mut base = SimpleState::new(&plan).unwrap();
        let past = 20;
        if inside {
            // 19 positions, then one step: the cache holds 20 with room to grow, as mid-caption.
            base.run(step_inputs(&dims, 0, past - 1, false)).unwrap();
            base.run(step_inputs(&dims, past - 1, 1, false)).unwrap();
        }
        println!("{role:?}: KV cache inside the plan: {inside}");
        let reps = 100;
        let mut total = 0.0;
        for rep in 0..reps + 2 {
            // Every step from the same cache (a clone, outside the timing).
            let mut state = base.clone();
            let inputs: TVec<TValue> = match role {
                FileRole::ImageEncoder => tvec!(Tensor::zero::<f32>(&[1, 3, 224, 224]).unwrap().into()),
                _ => step_inputs(&dims, past, 1, !inside),
            };
            let t0 = Instant::now();
            state
                .run_plan_with_eval(inputs, |ctx, st, node, input| {
                    let t = Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(ctx, st, node, input);
                    if rep >= 2 {
                        let key = format!("{}", node.op().name());
                        let e = per.entry(key).or_default();
                        e.0 += t.elapsed().as_secs_f64() * 1e3;
                        e.1 += 1;
                    }
                    r
                })
                .unwrap();
            if rep >= 2 {
                total += t0.elapsed().as_secs_f64() * 1e3;
            }
        }
        println!("{role:?}: {:.3} ms per run, {} nodes", total / reps as f64, plan.model().nodes().len());
        let mut v: Vec<_> = per.into_iter().collect();
        v.sort_by(|a, b| b.1 .0.partial_cmp(&a.1 .0).unwrap());
        for (k, (ms, n)) in v.iter().take(25) {
            println!("  {k:40} {:8.3} ms  {:5} calls", ms / reps as f64, n / reps);
        }
    }
}

/// A decoder call's inputs: `seq` zero embeddings at position `start`, and a zero `past` of
/// `start` positions if `with_past`.
fn step_inputs(dims: &ModelDims, start: usize, seq: usize, with_past: bool) -> TVec<TValue> {
    let positions: Vec<i64> = (start as i64..(start + seq) as i64).collect();
    let bias = Tensor::from_shape(&[seq, start + seq], &causal_bias(seq, start)).unwrap();
    let mut inputs = tvec!(
        Tensor::zero::<f32>(&[1, seq, dims.hidden_size]).unwrap().into(),
        tensor1(&positions).into(),
        bias.into()
    );
    if with_past {
        let shape = [dims.num_layers, 2, 1, dims.num_heads, start, dims.head_dim()];
        inputs.push(Tensor::zero::<f32>(&shape).unwrap().into());
    }
    inputs
}
