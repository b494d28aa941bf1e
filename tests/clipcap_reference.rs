//! Bundles exported from PyTorch ClipCap checkpoints reproduce the reference implementation:
//! image embeddings (cosine ≥ 0.9999), prefixes, first-step logits, greedy and beam token ids.
//!
//! The reference values come from `tests/fixtures/make_fixtures.py` (transformers + the ClipCap
//! model definitions). `EDGECAP_FULL_FIXTURES=DIR` runs the same checks on the full-size layouts
//! that `make_fixtures.py --full DIR` writes (ViT-B/32, distilgpt2-shaped GPT-2; not committed).

use std::path::Path;

use edgecap_engine::image_load::load_rgb;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy;
use edgecap_tests::{cosine, export_reference, floats, ids, max_abs_diff};
use image::RgbImage;

/// Largest difference allowed between tract and PyTorch on the same pixels, relative to the
/// largest reference value: float summation order only.
const RELATIVE_TOLERANCE: f32 = 1e-4;

/// The 224×224 crop PIL decoded and CLIP saw, written by `make_fixtures.py`.
///
/// JPEG decoders are not bit-exact (the engine's zune-jpeg and PIL's libjpeg-turbo round the
/// IDCT and chroma upsampling differently, ±1..4 levels), and the random fixture models amplify
/// such differences into different tokens. So the model is compared on PIL's own pixels (a
/// 224×224 image passes the engine's resize and crop unchanged), while the end-to-end path from
/// the file is held to the embedding-cosine bound below.
fn reference_crop(root: &Path, file: &str) -> RgbImage {
    let name = Path::new(file).file_name().unwrap().to_string_lossy().into_owned();
    let path = root.join("reference/pixels").join(format!("{name}.npy"));
    let (shape, data) = npy::read::<u8>(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(shape.len(), 3, "{}: expected H×W×3", path.display());
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, data).expect("crop buffer size")
}

fn relative_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    max_abs_diff(got, want) / scale
}

fn check_variant(reference: &serde_json::Value, root: &Path) {
    let variant = reference["variant"].as_str().expect("variant");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = export_reference(reference, root, &dir.path().join(variant));
    let model = CaptionModel::load(&bundle).expect("load exported bundle");
    let mut opts = model.default_options();
    assert_eq!(opts.max_tokens, reference["max_tokens"].as_u64().unwrap() as usize);
    assert_eq!(opts.stop_token_ids, vec![reference["stop_token"].as_u64().unwrap() as u32]);
    let images = reference["images"].as_array().expect("images");
    assert!(!images.is_empty());
    for case in images {
        let file = case["file"].as_str().unwrap();
        let want_embeds = floats(&case["image_embeds"]);
        opts.beam_width = 1;

        // End to end from the file, with the engine's own decoder.
        let decoded = load_rgb(&root.join(file)).expect("fixture image loads");
        let from_file = model.trace(&decoded, &opts).expect("caption");
        let cos = cosine(&from_file.image_embeds, &want_embeds);
        println!(
            "{variant} {file}: from the file: embedding cosine {cos:.7}, max abs diff {:.2e}",
            max_abs_diff(&from_file.image_embeds, &want_embeds)
        );
        assert!(cos >= 0.9999, "{variant} {file}: embedding cosine {cos}");

        // The model on exactly the pixels the reference saw.
        let rgb = reference_crop(root, file);
        let trace = model.trace(&rgb, &opts).expect("caption");
        let stages = [
            ("image_embeds", &trace.image_embeds, want_embeds),
            ("prefix", &trace.prefix, floats(&case["prefix"])),
            ("logits_step0", &trace.logits_step0, floats(&case["logits_step0"])),
        ];
        for (stage, got, want) in stages {
            let rel = relative_diff(got, &want);
            println!("{variant} {file}: {stage} max abs diff {:.2e} (relative {rel:.1e})", max_abs_diff(got, &want));
            assert!(rel < RELATIVE_TOLERANCE, "{variant} {file}: {stage} differs by {rel:.1e} relative");
        }
        assert_eq!(trace.caption.tokens, ids(&case["greedy"]), "{variant} {file}: greedy tokens");
        for (width, want) in case["beam"].as_object().expect("beam results") {
            opts.beam_width = width.parse().unwrap();
            let caption = model.caption(&rgb, &opts).expect("beam caption");
            assert_eq!(caption.tokens, ids(want), "{variant} {file}: beam {width} tokens");
        }
    }
}

#[test]
fn mlp_mapper_with_tuned_gpt2_matches_pytorch() {
    let root = edgecap_tests::fixtures();
    check_variant(&edgecap_tests::reference("clipcap-mlp.json"), &root);
}

/// The outlier-structured twin of the MLP variant (`make_fixtures.py`: a few LayerNorm channels
/// ×20–60, the readers' input rows divided back) reproduces the plain model's reference: the same
/// function in float, whatever int8 makes of it.
#[test]
fn outlier_structured_mlp_variant_matches_the_plain_reference() {
    let root = edgecap_tests::fixtures();
    let outliers = edgecap_tests::reference("clipcap-mlp-outliers.json");
    let mut reference = edgecap_tests::reference("clipcap-mlp.json");
    for key in ["variant", "clip", "checkpoint"] {
        reference[key] = outliers[key].clone();
    }
    check_variant(&reference, &root);
}

#[test]
fn transformer_mapper_with_frozen_gpt2_matches_pytorch() {
    let root = edgecap_tests::fixtures();
    check_variant(&edgecap_tests::reference("clipcap-transformer.json"), &root);
}

/// Full-size layouts; needs `make_fixtures.py --full DIR` (torch) first, so opt-in.
#[test]
#[ignore = "set EDGECAP_FULL_FIXTURES to the output of make_fixtures.py --full"]
fn full_size_layouts_match_pytorch() {
    let root = std::path::PathBuf::from(std::env::var("EDGECAP_FULL_FIXTURES").expect("EDGECAP_FULL_FIXTURES"));
    for name in ["clipcap-mlp.json", "clipcap-transformer.json"] {
        let path = root.join("reference").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_variant(&serde_json::from_str(&text).unwrap(), &root);
    }
    // The outlier-structured twin, where make_fixtures.py wrote it, against the plain reference.
    let outliers = root.join("reference/clipcap-mlp-outliers.json");
    if let Ok(text) = std::fs::read_to_string(&outliers) {
        let outliers: serde_json::Value = serde_json::from_str(&text).unwrap();
        let text = std::fs::read_to_string(root.join("reference/clipcap-mlp.json")).unwrap();
        let mut reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in ["variant", "clip", "checkpoint"] {
            reference[key] = outliers[key].clone();
        }
        check_variant(&reference, &root);
    }
}
