//! Cross-checks image loading and CLIP preprocessing against PIL and transformers'
//! `CLIPImageProcessorPil` on real photographs.
//!
//! References: `tests/fixtures/reference/pixels/` (shared fixtures, `make_fixtures.py`) and
//! `tests/fixtures/preprocess/` (`make_preprocess_refs.py`). The resampler must be pixel-exact.
//! Decoding is exact for PNG, GIF, WebP and BMP; JPEG is decoded by a different IDCT than
//! libjpeg-turbo (PIL), so JPEG inputs are compared within a small bound instead.

use std::path::{Path, PathBuf};

use edgecap_engine::image_load::{self, ImageError};
use edgecap_engine::npy;
use edgecap_engine::preprocess::{self, PreprocessConfig};
use image::RgbImage;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn refs() -> PathBuf {
    fixtures().join("preprocess")
}

fn cases() -> Value {
    let path = refs().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn str_field<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key].as_str().unwrap_or_else(|| panic!("case without '{key}': {case}"))
}

fn u32_field(case: &Value, key: &str) -> u32 {
    case[key].as_u64().unwrap_or_else(|| panic!("case without '{key}': {case}")) as u32
}

/// Reads a uint8 HWC RGB reference into an image.
fn read_rgb_npy(path: &Path) -> RgbImage {
    let (shape, data) = npy::read::<u8>(path).unwrap();
    assert_eq!(shape.len(), 3, "{}: shape {shape:?}", path.display());
    assert_eq!(shape[2], 3, "{}: shape {shape:?}", path.display());
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, data).unwrap()
}

/// Per-value absolute differences: (max, count of differing values, mean).
fn diff_stats(got: &RgbImage, expected: &RgbImage) -> (u8, usize, f64) {
    assert_eq!(got.dimensions(), expected.dimensions(), "size differs");
    let diffs: Vec<u8> = got.as_raw().iter().zip(expected.as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let count = diffs.iter().filter(|&&d| d > 0).count();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len().max(1) as f64;
    (max, count, mean)
}

fn assert_identical(label: &str, got: &RgbImage, expected: &RgbImage) {
    assert_eq!(got.dimensions(), expected.dimensions(), "{label}: size");
    if got != expected {
        let (max, count, _) = diff_stats(got, expected);
        let first = got.enumerate_pixels().find(|(x, y, p)| expected.get_pixel(*x, *y) != *p);
        panic!("{label}: {count} values differ (max {max}); first at {:?}", first.map(|(x, y, p)| (x, y, p.0)));
    }
}

fn is_jpeg(name: &str) -> bool {
    name.ends_with(".jpg") || name.ends_with(".jpeg")
}

#[test]
fn shared_fixture_crops_match_pil() {
    let cfg = PreprocessConfig::default();
    let dir = fixtures().join("images");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // JPEG, PNG (RGB, gray, RGBA, 16-bit), GIF, WebP, BMP, EXIF-rotated JPEG, small JPEG.
    assert!(names.len() >= 10, "expected the shared photographs in {}, found {names:?}", dir.display());
    for name in names {
        let img = image_load::load_rgb(&dir.join(&name)).unwrap();
        let crop = preprocess::resize_and_crop(&img, &cfg);
        let expected = read_rgb_npy(&fixtures().join("reference/pixels").join(format!("{name}.npy")));
        if is_jpeg(&name) {
            // zune-jpeg vs libjpeg-turbo: IDCT and chroma upsampling round differently (±1..4
            // per decoded value); the resize is exact (see resize tests), so only that remains.
            let (max, count, mean) = diff_stats(&crop, &expected);
            println!("{name}: JPEG decoder difference after crop: max {max}, {count} values, mean {mean:.3}");
            assert!(max <= 8 && mean < 1.0, "{name}: crop differs too much from PIL: max {max}, mean {mean}");
        } else {
            assert_identical(&name, &crop, &expected);
        }
    }
}

#[test]
fn exif_orientation_6_is_applied_to_jpeg() {
    let path = fixtures().join("images/rocket_exif6.jpg");
    let img = image_load::load_rgb(&path).unwrap();
    // Stored 213 wide and 320 high (sideways); upright it is landscape.
    assert_eq!(img.dimensions(), (320, 213));
}

#[test]
fn resize_matches_pil_bicubic_exactly() {
    let all = cases();
    let list = all["resize"].as_array().unwrap();
    assert!(list.len() >= 6);
    for case in list {
        let src = image_load::load_rgb(&refs().join(str_field(case, "source"))).unwrap();
        let (w, h) = (u32_field(case, "width"), u32_field(case, "height"));
        let expected = read_rgb_npy(&refs().join(str_field(case, "expected")));
        let label = format!("{} {}x{} -> {w}x{h}", str_field(case, "source"), src.width(), src.height());
        assert_identical(&label, &preprocess::resize(&src, w, h), &expected);
    }
}

fn config_for(case: &Value) -> PreprocessConfig {
    PreprocessConfig {
        shortest_edge: u32_field(case, "shortest_edge"),
        image_size: u32_field(case, "image_size"),
        ..PreprocessConfig::default()
    }
}

#[test]
fn crops_match_clip_image_processor_exactly() {
    let all = cases();
    let list = all["crop"].as_array().unwrap();
    assert!(list.len() >= 5);
    for case in list {
        let cfg = config_for(case);
        cfg.validate().unwrap();
        let src = image_load::load_rgb(&refs().join(str_field(case, "source"))).unwrap();
        let expected = read_rgb_npy(&refs().join(str_field(case, "expected")));
        let label = format!("{} edge {} crop {}", str_field(case, "source"), cfg.shortest_edge, cfg.image_size);
        assert_identical(&label, &preprocess::resize_and_crop(&src, &cfg), &expected);
    }
}

/// Largest |a - b| over two float tensors of the same length.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn pixel_values_match_clip_image_processor() {
    let all = cases();
    let mut checked = 0;
    for case in all["crop"].as_array().unwrap() {
        let Some(rel) = case["pixel_values"].as_str() else {
            continue;
        };
        let cfg = config_for(case);
        let src = image_load::load_rgb(&refs().join(str_field(case, "source"))).unwrap();
        let (shape, expected) = npy::read::<f32>(&refs().join(rel)).unwrap();
        let side = cfg.image_size as usize;
        assert_eq!(shape, vec![3, side, side]);
        let got = preprocess::preprocess(&src, &cfg);
        let diff = max_abs_diff(&got, &expected);
        assert!(diff <= 1e-6, "{rel}: max difference {diff}");
        checked += 1;
    }
    assert!(checked >= 2, "expected pixel_values references, checked {checked}");
}

#[test]
fn every_level_normalizes_like_the_processor() {
    let all = cases();
    let input = read_rgb_npy(&refs().join(str_field(&all["normalize_levels"], "input")));
    let (shape, expected) = npy::read::<f32>(&refs().join(str_field(&all["normalize_levels"], "expected"))).unwrap();
    assert_eq!(shape, vec![3, 16, 16]);
    let got = preprocess::normalize(&input, &PreprocessConfig::default());
    // Same f64 rescale and f32 normalisation as transformers: expected bit-identical.
    assert_eq!(max_abs_diff(&got, &expected), 0.0);
}

#[test]
fn exif_orientations_match_pil_exif_transpose() {
    let all = cases();
    let list = all["orientation"].as_array().unwrap();
    assert_eq!(list.len(), 8);
    for case in list {
        let got = image_load::load_rgb(&refs().join(str_field(case, "source"))).unwrap();
        let expected = read_rgb_npy(&refs().join(str_field(case, "expected")));
        assert_identical(&format!("orientation {}", case["orientation"]), &got, &expected);
    }
}

#[test]
fn palette_png_with_transparency_keeps_palette_colours() {
    let all = cases();
    let case = &all["palette"];
    let got = image_load::load_rgb(&refs().join(str_field(case, "source"))).unwrap();
    assert_identical("palette_trns.png", &got, &read_rgb_npy(&refs().join(str_field(case, "expected"))));
}

#[test]
fn bad_inputs_give_one_line_errors_naming_the_file() {
    let bad = fixtures().join("bad");
    let expectations = [
        ("empty.jpg", "empty file (0 bytes)"),
        ("truncated.jpg", "corrupt or truncated JPEG data: "),
        ("not_an_image.jpg", "not an image (unrecognised format)"),
        ("one_pixel.png", "image is 1×1 pixels, smaller than the 16-pixel minimum"),
        ("huge_header.png", "dimensions 100000×100000 exceed the limit of 16384×16384"),
        ("does_not_exist.png", "cannot read: "),
    ];
    for (file, expected) in expectations {
        let path = bad.join(file);
        let err = image_load::load_rgb(&path).unwrap_err();
        let text = err.to_string();
        println!("{text}");
        let prefix = format!("{}: ", path.display());
        assert!(text.starts_with(&prefix), "{text}");
        assert!(text[prefix.len()..].starts_with(expected), "{text}");
        assert!(!text.contains('\n') && text.len() < 300, "{text:?}");
    }
    // Refused from its header (the TooLarge case comes before any pixel buffer), not after
    // trying to allocate 40 GB: what a timing assertion used to stand for.
    let huge = image_load::load_rgb(&bad.join("huge_header.png")).unwrap_err();
    assert!(matches!(huge, ImageError::TooLarge { width: 100_000, height: 100_000, .. }), "{huge:?}");
}

#[test]
fn truncated_non_jpeg_files_are_refused() {
    let dir = fixtures().join("images");
    for name in ["chelsea.png", "chelsea.gif", "coffee.webp", "rocket.bmp"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let cut = &bytes[..bytes.len() / 2];
        let text = image_load::decode_rgb(cut, name).unwrap_err().to_string();
        assert!(text.starts_with(&format!("{name}: corrupt or truncated ")), "{text}");
        assert!(!text.contains('\n'), "{text:?}");
    }
}
