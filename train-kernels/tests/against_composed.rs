//! Each fused kernel against the same function composed from candle's primitives (candle's own
//! autograd is the independent reference for the gradients): same values, same gradients of a
//! random projection of the output, to 1e-5 of the largest magnitude.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use edgecap_train_kernels::{self as kernels, composed};

/// Deterministic values in [-scale, scale) + offset (a 64-bit LCG; no dependency on candle's
/// unseeded random generator).
fn values(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * scale + offset
        })
        .collect()
}

fn var(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<Var> {
    let n = shape.iter().product();
    Ok(Var::from_tensor(&Tensor::from_vec(values(n, seed, scale, offset), shape, &Device::Cpu)?)?)
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (got, want) = (got.flatten_all()?.to_vec1::<f32>()?, want.flatten_all()?.to_vec1::<f32>()?);
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-5 * scale, "{what}: differs by {worst} (largest magnitude {scale})");
    Ok(())
}

/// Runs `fused` and `reference` on the same inputs; compares outputs and the gradients of
/// Σ out·r (r random) with respect to every input.
fn check(
    what: &str,
    inputs: &[Var],
    fused: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> Result<()> {
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let (got, want) = (fused(&tensors)?, reference(&tensors)?);
    assert_close(&format!("{what} output"), &got, &want)?;
    let r = Tensor::from_vec(values(got.elem_count(), 99, 1.0, 0.0), got.shape(), &Device::Cpu)?;
    let (got_grads, want_grads) = ((&got * &r)?.sum_all()?.backward()?, (&want * &r)?.sum_all()?.backward()?);
    for (i, input) in inputs.iter().enumerate() {
        let g = got_grads.get(input).unwrap_or_else(|| panic!("{what}: no gradient for input {i}"));
        let w = want_grads.get(input).unwrap_or_else(|| panic!("{what}: reference has no gradient for input {i}"));
        assert_close(&format!("{what} gradient of input {i}"), g, w)?;
    }
    Ok(())
}

#[test]
fn layer_norm_matches_composed() -> Result<()> {
    // Rows far from zero mean (as residual streams drift) and a width that is not a power of two.
    for (shape, offset) in [(vec![4, 7, 96], 3.0f32), (vec![33, 64], 0.0), (vec![5, 1], 0.5)] {
        let d = *shape.last().unwrap_or(&1);
        let inputs = [var(&shape, 1, 2.0, offset)?, var(&[d], 2, 0.5, 1.0)?, var(&[d], 3, 0.5, 0.0)?];
        check(
            &format!("layer_norm {shape:?}"),
            &inputs,
            |t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            |t| composed::layer_norm(&t[0], &t[1], &t[2], 1e-5),
        )?;
    }
    Ok(())
}

#[test]
fn softmax_and_log_softmax_match_composed() -> Result<()> {
    // Attention-score shaped, with the causal mask's large negative bias in some entries.
    let inputs = [var(&[2, 4, 26, 26], 4, 8.0, 0.0)?];
    let mask = Tensor::from_vec(
        (0..26 * 26).map(|i| if i % 26 > i / 26 { -1e9f32 } else { 0.0 }).collect::<Vec<_>>(),
        (26, 26),
        &Device::Cpu,
    )?;
    check("softmax", &inputs, |t| kernels::softmax(&t[0]), |t| composed::softmax(&t[0]))?;
    check(
        "masked softmax",
        &inputs,
        |t| kernels::softmax(&t[0].broadcast_add(&mask)?),
        |t| composed::softmax(&t[0].broadcast_add(&mask)?),
    )?;
    let logits = [var(&[64, 257], 5, 20.0, 0.0)?];
    check("log_softmax", &logits, |t| kernels::log_softmax(&t[0]), |t| composed::log_softmax(&t[0]))?;
    Ok(())
}

#[test]
fn add_bias_matches_broadcast_add() -> Result<()> {
    // A linear layer's bias over [B, S, D], and a position table [S, D] over the batch.
    let linear = [var(&[3, 5, 16], 6, 1.0, 0.0)?, var(&[16], 7, 1.0, 0.0)?];
    check("bias", &linear, |t| kernels::add_bias(&t[0], &t[1]), |t| composed::add_bias(&t[0], &t[1]))?;
    let positions = [var(&[3, 5, 16], 8, 1.0, 0.0)?, var(&[5, 16], 9, 1.0, 0.0)?];
    check("positions", &positions, |t| kernels::add_bias(&t[0], &t[1]), |t| composed::add_bias(&t[0], &t[1]))?;
    Ok(())
}

#[test]
fn quick_gelu_matches_composed() -> Result<()> {
    let inputs = [var(&[7, 384], 10, 6.0, 0.0)?];
    check("quick_gelu", &inputs, |t| kernels::quick_gelu(&t[0]), |t| composed::quick_gelu(&t[0]))
}

#[test]
fn non_contiguous_inputs_are_read_in_logical_order() -> Result<()> {
    let x = var(&[16, 8], 11, 1.0, 0.0)?;
    let (w, b) = (var(&[16], 12, 1.0, 1.0)?, var(&[16], 13, 1.0, 0.0)?);
    check(
        "transposed layer_norm",
        &[x, w, b],
        |t| kernels::layer_norm(&t[0].t()?, &t[1], &t[2], 1e-5),
        |t| composed::layer_norm(&t[0].t()?, &t[1], &t[2], 1e-5),
    )?;
    let s = var(&[8, 12], 14, 3.0, 0.0)?;
    check("transposed softmax", &[s], |t| kernels::softmax(&t[0].t()?), |t| composed::softmax(&t[0].t()?))
}

#[test]
fn bad_inputs_are_errors_not_panics() -> Result<()> {
    let x = Tensor::zeros((4, 8), DType::F32, &Device::Cpu)?;
    let wrong = Tensor::zeros(7, DType::F32, &Device::Cpu)?;
    let err = kernels::add_bias(&x, &wrong).expect_err("a bias of 7 over rows of 8");
    assert!(err.to_string().contains("trailing dims"), "{err}");
    let err = kernels::layer_norm(&x, &wrong, &wrong, 1e-5).expect_err("a weight of 7 over rows of 8");
    assert!(err.to_string().contains("weight has 7 elements, expected 8"), "{err}");
    let err = kernels::softmax(&x.to_dtype(DType::F64)?).expect_err("f64");
    assert!(err.to_string().contains("f32 tensors only"), "{err}");
    Ok(())
}
