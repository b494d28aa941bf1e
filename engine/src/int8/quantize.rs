//! ONNX `QuantizeLinear` with one scale and zero point, in a loop the compiler vectorises.
//!
//! tract 0.23.9 rounds each value in a scalar function call: in the int8 CLIP encoder that was
//! 10 of 44 ms. Same semantics here, `saturate(round_half_even(x / scale) + zero)`.

use tract_onnx::tract_hir::internal::*;

#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeLinear {
    pub(super) scale: f32,
    pub(super) zero: i32,
    /// i8 or u8.
    pub(super) datum: DatumType,
}

// tract's Op needs Eq; the scale is a finite, positive initializer.
impl Eq for QuantizeLinear {}

impl QuantizeLinear {
    fn range(&self) -> (i32, i32) {
        if self.datum == DatumType::U8 {
            (0, 255)
        } else {
            (-128, 127)
        }
    }

    /// The quantized values, still as i32.
    fn quantize<'a>(&self, xs: &'a [f32]) -> impl Iterator<Item = i32> + 'a {
        let (lo, hi) = self.range();
        // Clamped before rounding, so that the rounding trick stays exact and values saturate as
        // ONNX asks; `float::clamp` (not `f32::clamp`) sends NaN to the low end rather than
        // through the trick.
        let (lo_f, hi_f) = ((lo - self.zero) as f32, (hi - self.zero) as f32);
        let (scale, zero) = (self.scale, self.zero);
        xs.iter().map(move |&x| round_half_even(crate::float::clamp(x / scale, lo_f, hi_f)) + zero)
    }
}

/// Half to even under the default rounding mode, for |v| < 2^22: `v + 1.5·2^23` lies where
/// floats are one apart, so it is rounded to the nearest integer and that integer sits in the
/// low bits. Read from the bits, without a float-to-int conversion: Rust's saturating `as i32`
/// is scalar on x86-64's baseline, and it kept the quantizing loops from vectorising.
pub fn round_half_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

impl Op for QuantizeLinear {
    fn name(&self) -> StaticName {
        "QuantizeLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale {} zero {} to {:?}", self.scale, self.zero, self.datum)])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let q = self.quantize(xs);
        let y = if self.datum == DatumType::U8 {
            Tensor::from_shape(x.shape(), &q.map(|v| v as u8).collect::<Vec<u8>>())?
        } else {
            Tensor::from_shape(x.shape(), &q.map(|v| v as i8).collect::<Vec<i8>>())?
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantizeLinear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "QuantizeLinear of {:?}", inputs[0].datum_type);
        Ok(tvec!(self.datum.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_saturates() {
        let q = QuantizeLinear { scale: 0.5, zero: 3, datum: DatumType::I8 };
        // x / 0.5: 0.5 → 1, 1.5 → 3, 2.5 → 5 exactly; then ties 0.25 → 0.5 → 0, 0.75 → 1.5 → 2.
        let xs = [0.25, 0.75, -0.25, -0.75, 1.25, 100.0, -100.0, 0.0, 62.0, -65.0];
        let got: Vec<i32> = q.quantize(&xs).collect();
        let want: Vec<i32> = xs.iter().map(|&x| ((x / 0.5f32).round_ties_even() as i32 + 3).clamp(-128, 127)).collect();
        assert_eq!(got, want);
        assert_eq!(got, [3, 5, 3, 1, 5, 127, -128, 3, 127, -127]);
        let u = QuantizeLinear { scale: 0.1, zero: 10, datum: DatumType::U8 };
        assert_eq!(u.quantize(&[-5.0, 0.0, 24.5, 30.0]).collect::<Vec<_>>(), [0, 10, 255, 255]);
        // Non-finite activations stay inside the type's range.
        let odd = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        assert_eq!(q.quantize(&odd).collect::<Vec<_>>(), [-128, 127, -128]);
    }

    #[test]
    fn magic_rounding_matches_the_standard_library() {
        for i in -40_000..40_000 {
            let v = i as f32 * 0.0125;
            assert_eq!(round_half_even(v), v.round_ties_even() as i32, "{v}");
        }
        // Up to the edge of the trick's range, 2^22.
        for v in [4_194_303.5f32, -4_194_303.5, 4_194_302.5, 1e6 + 0.5, -1e6 - 0.5] {
            assert_eq!(round_half_even(v), v.round_ties_even() as i32, "{v}");
        }
    }
}
