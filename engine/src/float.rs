//! f32 maximum and clamp that compile to comparisons on 32-bit ARM.
//!
//! The armhf targets' floating point (VFPv3) has no maximum instruction, so `f32::max` and
//! `f32::min` are calls into libm there: 50 M instructions of a caption went to `fmaxf`/`fminf`
//! on a Cortex-A7 (emulated counts). Elsewhere the standard functions stay, which vectorise to
//! FMAXNM / VMAXPS.

/// `a.max(b)` where `a` is not NaN (a running maximum): a NaN `b` is passed over.
#[inline(always)]
pub fn max(a: f32, b: f32) -> f32 {
    if cfg!(target_arch = "arm") {
        if b > a {
            b
        } else {
            a
        }
    } else {
        a.max(b)
    }
}

/// `v.max(lo).min(hi)`: NaN gives `lo`.
#[inline(always)]
pub fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if cfg!(target_arch = "arm") {
        if v >= lo {
            if v <= hi {
                v
            } else {
                hi
            }
        } else {
            lo
        }
    } else {
        v.max(lo).min(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_the_standard_functions() {
        let values = [f32::NAN, f32::NEG_INFINITY, -3.5, -0.0, 0.0, 1.0, 200.0, f32::INFINITY];
        for &a in values.iter().filter(|a| !a.is_nan()) {
            for &b in &values {
                assert_eq!(max(a, b).to_bits(), a.max(b).to_bits(), "max({a}, {b})");
            }
        }
        for &v in &values {
            let want = v.max(-128.0).min(127.0);
            assert!(clamp(v, -128.0, 127.0) == want, "clamp({v})");
        }
    }
}
