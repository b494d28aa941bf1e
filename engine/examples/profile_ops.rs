//! Where an image encoding and one decoding step spend their time, operator by operator (summed
//! by operator name over 100 runs, after 2 warm-ups), for a bundle's plans as the engine loads
//! them. The decoding step is one token after 20 cached positions.
//!
//!     T=2 cargo run --release -p edgecap-engine --example profile_ops BUNDLE [ImageEncoder|Decoder]
//!
//! A profile, not a test: it prints and asserts nothing. `T`: threads (default 2).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use edgecap_engine::bundle::Bundle;
use edgecap_engine::graph::{self, GraphShapes};
use edgecap_engine::manifest::FileRole;
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
        let plan = graph::load(&b.path(role), &shapes).unwrap();
        let mut per: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let mut state = SimpleState::new(&plan).unwrap();
        let reps = 100;
        let mut total = 0.0;
        for rep in 0..reps + 2 {
            let inputs: TVec<TValue> = match role {
                FileRole::ImageEncoder => tvec!(Tensor::zero::<f32>(&[1, 3, 224, 224]).unwrap().into()),
                _ => {
                    let t = 20;
                    let bias = Tensor::zero::<f32>(&[1, t + 1]).unwrap();
                    tvec!(
                        Tensor::zero::<f32>(&[1, 1, 768]).unwrap().into(),
                        tensor1(&[t as i64]).into(),
                        bias.into(),
                        Tensor::zero::<f32>(&[6, 2, 1, 12, t, 64]).unwrap().into()
                    )
                }
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
