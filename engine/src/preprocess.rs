//! CLIP image preprocessing, pixel-identical to transformers' PIL-backed CLIP image processor.
//!
//! The reference is the *slow* (PIL/NumPy) processor: `CLIPImageProcessorPil` in transformers 5
//! (`CLIPImageProcessor` in 4.x). transformers 5's default `CLIPImageProcessor` is the
//! torchvision backend, whose antialiased bicubic differs from PIL by a few levels; the ClipCap and
//! OpenAI-CLIP references both resize with PIL, so PIL is what we match.
//!
//! Steps, with the defaults of `openai/clip-vit-base-patch32`:
//!
//! 1. resize so the shortest edge is 224, the long edge `int(224 * long / short)` (truncated, as
//!    transformers' `get_resize_output_image_size` does), with PIL's BICUBIC filter;
//! 2. center crop 224×224 at offset `(resized - crop) // 2` (floor);
//! 3. rescale by 1/255 and normalise with the OpenAI CLIP mean and std, output CHW `f32`.
//!
//! The resampler re-implements the arithmetic of Pillow's `libImaging/Resample.c` for 8-bit
//! images: a separable convolution with the Keys cubic (a = -0.5) stretched by the scale factor
//! when downsampling (antialiasing), coefficients normalised to sum 1 in `f64`, then quantised to
//! 22 fractional bits; one pass writes an 8-bit intermediate (rounded and clipped) that the
//! other pass reads. The pass order matters for that rounding and follows Pillow 13 (see
//! `horizontal_first`). Within a pass everything after the coefficients is integer arithmetic,
//! so the result is bit-exact whatever the loop order: the vertical pass walks whole rows (cache-
//! and SIMD-friendly) and only the pixels inside the crop window are ever computed.
//!
//! Matched against Pillow 13.0.0 and transformers 5.x (`CLIPImageProcessorPil`).

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Fractional bits of the fixed-point filter coefficients (Pillow: 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Largest accepted `shortest_edge` / `image_size`: far beyond any vision encoder input, small
/// enough that a mistyped config cannot ask for gigabytes.
const MAX_CONFIG_SIDE: u32 = 4096;

/// Resampling filter of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    /// PIL's `Image.BICUBIC` (Keys cubic, a = -0.5, antialiased when downsampling).
    Bicubic,
}

/// Which square is cut out of the resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// The centre square, offsets rounded down (transformers' `center_crop`).
    Center,
}

/// How a decoded RGB image becomes the vision encoder's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// Side of the square crop, i.e. the encoder's input resolution.
    pub image_size: u32,
    /// The shortest edge is resized to this many pixels before cropping.
    pub shortest_edge: u32,
    pub resample: Resample,
    pub crop: Crop,
    /// Multiplies the 0..=255 pixel values (1/255).
    pub rescale: f32,
    /// Per-channel (R, G, B) mean subtracted after rescaling.
    pub mean: [f32; 3],
    /// Per-channel (R, G, B) standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// `openai/clip-vit-base-patch32`'s `preprocessor_config.json`.
    // The constants are spelled as published; f32 rounds the extra digits identically.
    #[allow(clippy::excessive_precision)]
    fn default() -> Self {
        PreprocessConfig {
            image_size: 224,
            shortest_edge: 224,
            resample: Resample::Bicubic,
            crop: Crop::Center,
            rescale: 1.0 / 255.0,
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.26862954, 0.26130258, 0.27577711],
        }
    }
}

impl PreprocessConfig {
    /// Checks the values make sense; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        for (field, v) in [("image_size", self.image_size), ("shortest_edge", self.shortest_edge)] {
            if v == 0 || v > MAX_CONFIG_SIDE {
                return Err(format!("{field} is {v}, expected 1..={MAX_CONFIG_SIDE}"));
            }
        }
        if self.image_size > self.shortest_edge {
            return Err(format!(
                "image_size {} is larger than shortest_edge {}: the crop would not fit",
                self.image_size, self.shortest_edge
            ));
        }
        if !(self.rescale.is_finite() && self.rescale > 0.0) {
            return Err(format!("rescale is {}, expected a positive number", self.rescale));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("mean contains {m}, expected finite numbers"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("std contains {s}, expected positive numbers"));
        }
        Ok(())
    }

    /// Number of `f32` values [`preprocess`] returns (3 × image_size²).
    pub fn tensor_len(&self) -> usize {
        3 * self.image_size as usize * self.image_size as usize
    }
}

/// Resize (shortest edge) and center crop: the `image_size`² uint8 image the encoder sees.
///
/// Expects a validated config; a crop larger than the resized image is padded with black, as
/// transformers' `center_crop` does, rather than failing.
pub fn resize_and_crop(img: &RgbImage, cfg: &PreprocessConfig) -> RgbImage {
    let crop = cfg.image_size;
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || crop == 0 {
        return RgbImage::new(crop, crop);
    }
    let (new_w, new_h) = resized_size(w, h, cfg.shortest_edge);
    let (cols, col_pad) = crop_window(new_w, crop);
    let (rows, row_pad) = crop_window(new_h, crop);
    let window = resample_window(img, (new_w, new_h), cols.clone(), rows.clone());
    if cols.len() == crop as usize && rows.len() == crop as usize {
        return window;
    }
    let mut out = RgbImage::new(crop, crop);
    image::imageops::replace(&mut out, &window, i64::from(col_pad), i64::from(row_pad));
    out
}

/// Rescales and normalises an RGB image into a CHW `f32` tensor (`3 × height × width`).
pub fn normalize(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let lut = value_table(cfg);
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = lut[0][px[0] as usize];
        g[i] = lut[1][px[1] as usize];
        b[i] = lut[2][px[2] as usize];
    }
    out
}

/// The whole pipeline: [`resize_and_crop`] then [`normalize`]; `3 × image_size²` values, CHW.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    normalize(&resize_and_crop(img, cfg), cfg)
}

/// Resizes the whole image to `width × height` like PIL's `Image.resize(size, Image.BICUBIC)`.
pub fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.width() == 0 || img.height() == 0 {
        return RgbImage::new(width, height);
    }
    resample_window(img, (width, height), 0..width as usize, 0..height as usize)
}

/// Output size of the shortest-edge resize, as transformers' `get_resize_output_image_size`
/// with `default_to_square=False`: the long side is `int(size * long / short)`, truncated.
pub fn resized_size(width: u32, height: u32, shortest_edge: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    // Same double-precision division as Python's `/` on ints (both operands exact in f64).
    let new_long = (f64::from(shortest_edge) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (shortest_edge, new_long)
    } else {
        (new_long, shortest_edge)
    }
}

/// The part of `0..resized` inside a centred crop of `crop` pixels, and where that part lands in
/// the crop. transformers takes offset `(resized - crop) // 2` (floor division, also when
/// negative, where the crop is padded): output pixel `o` shows resized pixel `o + offset`.
fn crop_window(resized: u32, crop: u32) -> (std::ops::Range<usize>, u32) {
    let offset = (i64::from(resized) - i64::from(crop)).div_euclid(2);
    let first = offset.max(0);
    let end = (offset + i64::from(crop)).min(i64::from(resized));
    let pad = (first - offset) as u32;
    (first as usize..end.max(first) as usize, pad)
}

/// PIL's bicubic kernel (Keys, a = -0.5), written in the same operation order as Pillow so
/// that the `f64` results are identical.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for a range of output positions along one axis.
struct AxisFilter {
    /// Per output position: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` coefficients per output position (unused tail is zero).
    coeffs: Vec<i32>,
    ksize: usize,
}

impl AxisFilter {
    /// Taps for outputs `window` of a resize from `in_size` to `out_size` samples (Pillow's
    /// `precompute_coeffs` + `normalize_coeffs_8bpc`, restricted to the window).
    fn new(in_size: u32, out_size: u32, window: std::ops::Range<usize>) -> AxisFilter {
        // Pillow computes the box extent in single precision, then divides in double.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(window.len());
        let mut coeffs = vec![0i32; window.len() * ksize];
        let mut weights = vec![0f64; ksize];
        for (slot, xx) in window.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            let inv = 1.0 / filterscale;
            // `as` truncates toward zero, like the C cast Pillow uses for rounding here.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let taps = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut total = 0.0;
            for (x, w) in weights.iter_mut().enumerate().take(taps) {
                *w = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * inv);
                total += *w;
            }
            let k = &mut coeffs[slot * ksize..slot * ksize + taps];
            for (c, &w) in k.iter_mut().zip(&weights[..taps]) {
                let w = if total != 0.0 { w / total } else { w };
                *c = quantize(w);
            }
            bounds.push((xmin as usize, taps));
        }
        AxisFilter { bounds, coeffs, ksize }
    }

    fn taps(&self, slot: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[slot];
        (start, &self.coeffs[slot * self.ksize..slot * self.ksize + n])
    }

    /// Input indices the whole window reads: `first..end`.
    fn input_span(&self) -> std::ops::Range<usize> {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
        first..end
    }
}

/// A coefficient in 22-bit fixed point, rounded half away from zero then truncated (as Pillow).
fn quantize(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// Fixed-point accumulator to 8 bits: Pillow starts sums at one half and clips `sum >> 22`.
/// The sums cannot overflow `i32`: |coefficients| sum to at most ~1.13 × 2^22 and pixels ≤ 255.
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `img` to `out_size` and returns only the output pixels in `cols × rows`.
fn resample_window(
    img: &RgbImage,
    out_size: (u32, u32),
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let (win_w, win_h) = (cols.len(), rows.len());
    // Like Pillow, an axis whose size does not change is not filtered at all.
    let horizontal = (out_size.0 != in_w).then(|| AxisFilter::new(in_w, out_size.0, cols.clone()));
    let vertical = (out_size.1 != in_h).then(|| AxisFilter::new(in_h, out_size.1, rows.clone()));
    let src = img.as_raw();
    let stride = in_w as usize * 3;
    let data = match (&horizontal, &vertical) {
        (Some(hf), Some(vf)) if horizontal_first((in_w, in_h), out_size) => {
            // Only the source rows the vertical taps read are filtered horizontally.
            let span = vf.input_span();
            let tmp = horizontal_pass(src, stride, span.clone(), 0, hf);
            vertical_pass(&tmp, win_w * 3, 0, win_w, span.start, vf)
        }
        (Some(hf), Some(vf)) => {
            // Only the source columns the horizontal taps read are filtered vertically.
            let span = hf.input_span();
            let tmp = vertical_pass(src, stride, span.start * 3, span.len(), 0, vf);
            horizontal_pass(&tmp, span.len() * 3, 0..win_h, span.start, hf)
        }
        (Some(hf), None) => horizontal_pass(src, stride, rows, 0, hf),
        (None, Some(vf)) => vertical_pass(src, stride, cols.start * 3, win_w, 0, vf),
        (None, None) => {
            rows.flat_map(|y| &src[y * stride + cols.start * 3..y * stride + cols.end * 3]).copied().collect()
        }
    };
    // The buffer has exactly win_w × win_h × 3 bytes by construction.
    RgbImage::from_raw(win_w as u32, win_h as u32, data).unwrap_or_else(|| RgbImage::new(win_w as u32, win_h as u32))
}

/// Pass order, which changes the rounding of the 8-bit intermediate. Pillow 13 filters
/// vertically first when the height shrinks by more than twice as many pixels as the width
/// (earlier Pillow always went horizontal first; the two differ only for such tall images).
fn horizontal_first(input: (u32, u32), output: (u32, u32)) -> bool {
    let shrink_h = i64::from(input.1) - i64::from(output.1);
    let shrink_w = i64::from(input.0) - i64::from(output.0);
    !(shrink_h > 0 && shrink_h > 2 * shrink_w)
}

/// Filters rows `rows` of `src` horizontally into the window's columns; `col_base` is the
/// input column that each `src` row starts at.
fn horizontal_pass(
    src: &[u8],
    stride: usize,
    rows: std::ops::Range<usize>,
    col_base: usize,
    f: &AxisFilter,
) -> Vec<u8> {
    let out_w = f.bounds.len();
    let mut out = Vec::with_capacity(rows.len() * out_w * 3);
    for y in rows {
        let line = &src[y * stride..(y + 1) * stride];
        for slot in 0..out_w {
            let (start, k) = f.taps(slot);
            let at = (start - col_base) * 3;
            let pixels = line[at..at + k.len() * 3].chunks_exact(3);
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (px, &c) in pixels.zip(k) {
                r += i32::from(px[0]) * c;
                g += i32::from(px[1]) * c;
                b += i32::from(px[2]) * c;
            }
            out.extend_from_slice(&[clip8(r), clip8(g), clip8(b)]);
        }
    }
    out
}

/// Filters vertically. `src` rows are `stride` bytes apart, the window's pixels start `x_off`
/// bytes into each row and are `width` pixels wide; `row_base` is the input row `src` starts at.
fn vertical_pass(src: &[u8], stride: usize, x_off: usize, width: usize, row_base: usize, f: &AxisFilter) -> Vec<u8> {
    let n = width * 3;
    let mut out = Vec::with_capacity(f.bounds.len() * n);
    let mut acc = vec![0i32; n];
    for slot in 0..f.bounds.len() {
        let (start, k) = f.taps(slot);
        acc.fill(HALF);
        // Row-wise accumulation: integer sums are exact, so this equals Pillow's per-pixel loop.
        for (i, &c) in k.iter().enumerate() {
            let at = (start + i - row_base) * stride + x_off;
            for (a, &v) in acc.iter_mut().zip(&src[at..at + n]) {
                *a += i32::from(v) * c;
            }
        }
        out.extend(acc.iter().map(|&s| clip8(s)));
    }
    out
}

/// Normalised value of every 8-bit level, per channel, computed as transformers does:
/// `float32(v * scale)` in double precision, then `(x - mean) / std` in single precision.
fn value_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let scale = exact_rescale(cfg.rescale);
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let x = (v as f64 * scale) as f32;
            *out = (x - cfg.mean[c]) / cfg.std[c];
        }
    }
    lut
}

/// The configured factor in double precision. The config stores `f32`; when it is the `f32`
/// nearest to `1/n` for an integer `n` (CLIP's 1/255), transformers' factor is the double `1/n`,
/// and using it keeps the rescaled values bit-identical (half of `v/255` differ by an ulp
/// otherwise).
fn exact_rescale(rescale: f32) -> f64 {
    let n = (1.0 / f64::from(rescale)).round();
    if n >= 1.0 && ((1.0 / n) as f32) == rescale {
        1.0 / n
    } else {
        f64::from(rescale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_truncates_the_long_side() {
        assert_eq!(resized_size(512, 512, 224), (224, 224));
        // 224 * 640 / 480 = 298.67 -> 298 (truncated, not rounded).
        assert_eq!(resized_size(640, 480, 224), (298, 224));
        assert_eq!(resized_size(480, 640, 224), (224, 298));
        assert_eq!(resized_size(20, 30, 224), (224, 336));
        assert_eq!(resized_size(3, 1000, 224), (224, 74666));
    }

    #[test]
    fn crop_offsets_round_down_and_pad_like_transformers() {
        assert_eq!(crop_window(224, 224), (0..224, 0));
        assert_eq!(crop_window(298, 224), (37..261, 0));
        assert_eq!(crop_window(299, 224), (37..261, 0)); // 75 // 2 = 37
                                                         // Smaller than the crop: transformers pads ceil(d/2) before.
        assert_eq!(crop_window(221, 224), (0..221, 2));
        assert_eq!(crop_window(222, 224), (0..222, 1));
    }

    #[test]
    fn bicubic_kernel_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(-2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(1.5), -0.0625);
        assert_eq!(bicubic(2.5), 0.0);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (inp, out) in [(640, 224), (224, 640), (17, 224), (1000, 3), (225, 224)] {
            let f = AxisFilter::new(inp, out, 0..out as usize);
            for slot in 0..out as usize {
                let (start, k) = f.taps(slot);
                assert!(start + k.len() <= inp as usize);
                let sum: i32 = k.iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= k.len() as i32, "{inp}->{out} slot {slot}: {sum}");
            }
        }
    }

    #[test]
    fn flat_images_stay_flat_and_same_size_is_identity() {
        let flat = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        for (w, h) in [(224, 224), (5, 80), (100, 7)] {
            let out = resize(&flat, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
        }
        let ramp = RgbImage::from_fn(31, 19, |x, y| image::Rgb([x as u8 * 8, y as u8 * 13, 7]));
        assert_eq!(resize(&ramp, 31, 19), ramp);
    }

    #[test]
    fn window_matches_full_resize() {
        let img = RgbImage::from_fn(97, 61, |x, y| image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (255 - x) as u8]));
        let full = resize(&img, 150, 40);
        let part = resample_window(&img, (150, 40), 20..90, 5..33);
        let expected = image::imageops::crop_imm(&full, 20, 5, 70, 28).to_image();
        assert_eq!(part, expected);
        // Same-width case (vertical filter only) and same-height case.
        let full = resize(&img, 97, 200);
        let part = resample_window(&img, (97, 200), 10..60, 30..130);
        assert_eq!(part, image::imageops::crop_imm(&full, 10, 30, 50, 100).to_image());
        let full = resize(&img, 12, 61);
        let part = resample_window(&img, (12, 61), 2..9, 4..50);
        assert_eq!(part, image::imageops::crop_imm(&full, 2, 4, 7, 46).to_image());
        // Vertical pass first (height shrinks much more than width).
        assert!(!horizontal_first((97, 61), (90, 20)));
        let full = resize(&img, 90, 20);
        let part = resample_window(&img, (90, 20), 7..80, 3..17);
        assert_eq!(part, image::imageops::crop_imm(&full, 7, 3, 73, 14).to_image());
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        assert!(horizontal_first((640, 480), (298, 224)));
        assert!(horizontal_first((20, 30), (224, 336))); // upscaling
        assert!(!horizontal_first((31, 17), (64, 9))); // wider but shorter
        assert!(!horizontal_first((500, 1500), (224, 672))); // tall photo: 828 > 2 × 276
        assert!(horizontal_first((500, 1000), (224, 448))); // exactly 2:1 is not "more than"
    }

    #[test]
    fn crop_is_centred_and_padded_when_config_is_odd() {
        let img = RgbImage::from_pixel(400, 300, image::Rgb([200, 100, 50]));
        let cfg = PreprocessConfig::default();
        let out = resize_and_crop(&img, &cfg);
        assert_eq!(out.dimensions(), (224, 224));
        // Invalid (crop > shortest edge) still returns the right size, black padded like HF.
        let odd = PreprocessConfig { image_size: 40, shortest_edge: 30, ..cfg.clone() };
        assert!(odd.validate().is_err());
        let out = resize_and_crop(&img, &odd);
        assert_eq!(out.dimensions(), (40, 40));
        assert_eq!(out.get_pixel(20, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(20, 20).0, [200, 100, 50]);
        assert_eq!(resize_and_crop(&RgbImage::new(0, 0), &cfg).dimensions(), (224, 224));
    }

    #[test]
    fn normalize_is_chw_with_clip_constants() {
        let cfg = PreprocessConfig::default();
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([(x + 2 * y) as u8 * 80, 0, 255]));
        let t = normalize(&img, &cfg);
        assert_eq!(t.len(), 12);
        let red: Vec<f32> =
            [0.0f64, 80.0, 160.0, 240.0].iter().map(|v| ((v / 255.0) as f32 - cfg.mean[0]) / cfg.std[0]).collect();
        assert_eq!(&t[0..4], red.as_slice());
        assert!(t[4..8].iter().all(|&g| g == (0.0 - cfg.mean[1]) / cfg.std[1]));
        assert!(t[8..12].iter().all(|&b| b == (1.0 - cfg.mean[2]) / cfg.std[2]));
        assert_eq!(preprocess(&img, &cfg).len(), cfg.tensor_len());
    }

    #[test]
    fn exact_rescale_recovers_reciprocals() {
        assert_eq!(exact_rescale(1.0 / 255.0), 1.0 / 255.0);
        assert_eq!(exact_rescale(1.0), 1.0);
        assert_eq!(exact_rescale(0.3), f64::from(0.3f32));
    }

    #[test]
    fn validate_names_the_field() {
        let ok = PreprocessConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (PreprocessConfig { image_size: 0, ..ok.clone() }, "image_size"),
            (PreprocessConfig { shortest_edge: 100_000, ..ok.clone() }, "shortest_edge"),
            (PreprocessConfig { image_size: 256, ..ok.clone() }, "larger than shortest_edge"),
            (PreprocessConfig { rescale: f32::NAN, ..ok.clone() }, "rescale"),
            (PreprocessConfig { mean: [0.0, f32::INFINITY, 0.0], ..ok.clone() }, "mean"),
            (PreprocessConfig { std: [0.2, 0.0, 0.2], ..ok.clone() }, "std"),
        ];
        for (cfg, needle) in cases {
            let err = cfg.validate().unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn config_serde_round_trip() {
        let cfg = PreprocessConfig::default();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"resample\":\"bicubic\"") && json.contains("\"crop\":\"center\""), "{json}");
        let back: PreprocessConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}
