//! Forward + backward time of each fused kernel against its composed reference, on the tensor
//! shapes of the default model's vision tower (batch 128, 26 tokens, width 96, 4 heads, MLP 384).
//! A benchmark, not a test: it prints medians of alternating runs and asserts nothing.
//!   cargo run --example kernel_bench -p edgecap-train-kernels [-- RUNS]

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use edgecap_train_kernels::{self as kernels, composed};

type Op = fn(&[Tensor]) -> Result<Tensor>;

fn input(shape: &[usize], seed: u64) -> Result<Var> {
    let n: usize = shape.iter().product();
    let mut state = seed;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Milliseconds for one forward and backward pass.
fn time(op: Op, inputs: &[Tensor]) -> Result<f64> {
    let start = Instant::now();
    let out = op(inputs)?;
    out.sum_all()?.backward()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let cases: Vec<(&str, Vec<Vec<usize>>, Op, Op)> = vec![
        (
            "layer_norm [128,26,96]",
            vec![vec![128, 26, 96], vec![96], vec![96]],
            |t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            |t| composed::layer_norm(&t[0], &t[1], &t[2], 1e-5),
        ),
        (
            "softmax [128,4,26,26]",
            vec![vec![128, 4, 26, 26]],
            |t| kernels::softmax(&t[0]),
            |t| composed::softmax(&t[0]),
        ),
        (
            "log_softmax [256,256]",
            vec![vec![256, 256]],
            |t| kernels::log_softmax(&t[0]),
            |t| composed::log_softmax(&t[0]),
        ),
        (
            "add_bias [128,26,384]+[384]",
            vec![vec![128, 26, 384], vec![384]],
            |t| kernels::add_bias(&t[0], &t[1]),
            |t| composed::add_bias(&t[0], &t[1]),
        ),
        (
            "quick_gelu [128,26,384]",
            vec![vec![128, 26, 384]],
            |t| kernels::quick_gelu(&t[0]),
            |t| composed::quick_gelu(&t[0]),
        ),
    ];
    println!("{:<30} {:>12} {:>12} {:>8}", "fwd+bwd, median of runs", "fused ms", "composed ms", "ratio");
    for (name, shapes, fused, reference) in cases {
        let vars = shapes.iter().enumerate().map(|(i, s)| input(s, i as u64 + 1)).collect::<Result<Vec<_>>>()?;
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (mut f, mut c) = (Vec::new(), Vec::new());
        // Alternate, so both see the same machine state; the first pair is a warm-up.
        for run in 0..=runs {
            let (tf, tc) = (time(fused, &inputs)?, time(reference, &inputs)?);
            if run > 0 {
                f.push(tf);
                c.push(tc);
            }
        }
        let (f, c) = (median(f), median(c));
        println!("{name:<30} {f:>12.3} {c:>12.3} {:>7.2}x", c / f);
    }
    Ok(())
}
