//! `host-tools quantize` and `validate` on the fixture bundle: the int8 bundle loads and captions,
//! its embeddings stay close to fp32, validate's numbers match an independent computation, and
//! its verdict and exit codes follow the thresholds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use edgecap_engine::manifest::Precision;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy::{self, f16};
use edgecap_tests::{binary, cosine, export_reference, fixtures, reference};
use host_tools::images;
use host_tools::quantize::{quantize_bundle, QuantScheme, QuantizeOptions};
use host_tools::validate::{validate, Thresholds, ValidateOptions};

/// fp32 and static-int8 fixture bundles, made once per test process.
fn bundles() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static B: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let fp32 = export_reference(&reference("clipcap-mlp.json"), &fixtures(), &dir.path().join("fp32"));
        let int8 = dir.path().join("int8");
        quantize_bundle(&quantize_options(&fp32, &int8, QuantScheme::StaticMinMax)).expect("quantize");
        (dir, fp32, int8)
    })
}

fn quantize_options(fp32: &Path, out: &Path, scheme: QuantScheme) -> QuantizeOptions {
    QuantizeOptions {
        bundle: fp32.to_path_buf(),
        out: out.to_path_buf(),
        calibration: fixtures().join("images"),
        scheme,
        float_lm_head: false,
        all_int8: true,
        progress: false,
    }
}

fn images_dir() -> PathBuf {
    fixtures().join("images")
}

#[test]
fn int8_bundle_loads_captions_and_keeps_embeddings() {
    let (_, fp32, int8) = bundles();
    let (a, b) = (CaptionModel::load(fp32).unwrap(), CaptionModel::load(int8).unwrap());
    assert_eq!(b.manifest.precision, Precision::Int8);
    assert!(b.manifest.source.contains("static-minmax"), "{}", b.manifest.source);
    // The int8 graphs really hold int8 linear layers.
    let decoder = std::fs::read(int8.join("decoder.onnx")).unwrap();
    assert!(decoder.windows(b"QLinearMatMul".len()).any(|w| w == b"QLinearMatMul"));
    let size = |m: &CaptionModel| m.manifest.files.iter().map(|f| f.bytes).sum::<u64>();
    assert!(size(&b) < size(&a), "int8 bundle {} bytes is not smaller than fp32 {}", size(&b), size(&a));

    // The token-embedding table is stored in f16: exactly the fp32 table rounded.
    let (shape32, table32) = npy::read::<f32>(&fp32.join("token_embeddings.npy")).unwrap();
    let (shape16, table16) = npy::read::<f16>(&int8.join("token_embeddings.npy")).unwrap();
    assert_eq!(shape16, shape32);
    assert!(table32.iter().zip(&table16).all(|(&x, &h)| f16::from_f32(x) == h));
    let (mut row32, mut row16) = (Vec::new(), Vec::new());
    a.push_token_embedding(13, &mut row32).unwrap();
    b.push_token_embedding(13, &mut row16).unwrap();
    assert!(row32.iter().zip(&row16).all(|(x, y)| (x - y).abs() <= x.abs() / 1024.0 + 1e-7), "row 13");

    let opts = a.default_options();
    for s in images::load_dir(&images_dir()).unwrap() {
        let (ta, tb) = (a.trace(&s.image, &opts).unwrap(), b.trace(&s.image, &opts).unwrap());
        let c = cosine(&ta.image_embeds, &tb.image_embeds);
        assert!(c >= 0.99, "{}: int8 embedding cosine {c}", s.path.display());
        assert!(!tb.caption.tokens.is_empty());
    }
}

#[test]
fn dynamic_and_percentile_scheme_bundles_caption() {
    let (dir, fp32, _) = bundles();
    for (name, scheme) in [("dynamic", QuantScheme::Dynamic), ("percentile", QuantScheme::StaticPercentile)] {
        let out = dir.path().join(name);
        quantize_bundle(&quantize_options(fp32, &out, scheme)).expect("quantize");
        check_close_to_fp32(fp32, &out);
    }
}

fn check_close_to_fp32(fp32: &Path, out: &Path) {
    let m = CaptionModel::load(out).unwrap();
    assert_eq!(m.manifest.precision, Precision::Int8);
    let img = images::load_dir(&images_dir()).unwrap().remove(0);
    let fp = CaptionModel::load(fp32).unwrap();
    let (a, b) =
        (fp.trace(&img.image, &fp.default_options()).unwrap(), m.trace(&img.image, &m.default_options()).unwrap());
    assert!(cosine(&a.image_embeds, &b.image_embeds) >= 0.99);
}

#[test]
fn validate_numbers_match_an_independent_computation() {
    let (_, fp32, int8) = bundles();
    let opts = ValidateOptions {
        fp32: fp32.clone(),
        int8: int8.clone(),
        images: images_dir(),
        references: None,
        thresholds: Thresholds::default(),
    };
    let r = validate(&opts).unwrap();
    let (a, b) = (CaptionModel::load(fp32).unwrap(), CaptionModel::load(int8).unwrap());
    let samples = images::load_dir(&images_dir()).unwrap();
    assert_eq!(r.images, samples.len());
    let (mut cosines, mut exact) = (Vec::new(), 0);
    for s in &samples {
        let (ta, tb) =
            (a.trace(&s.image, &a.default_options()).unwrap(), b.trace(&s.image, &b.default_options()).unwrap());
        cosines.push(cosine(&ta.image_embeds, &tb.image_embeds));
        exact += usize::from(ta.caption.text == tb.caption.text);
        // SQNR from its definition, in f64.
        let num: f64 = ta.prefix.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let den: f64 =
            ta.prefix.iter().zip(&tb.prefix).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt();
        let row = r.per_image.iter().find(|p| s.path.ends_with(&p.image)).unwrap();
        assert!((row.prefix_sqnr_db - 20.0 * (num / den).log10()).abs() < 1e-6);
    }
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    assert!((r.embedding_cosine.mean - mean).abs() < 1e-9, "{} vs {mean}", r.embedding_cosine.mean);
    assert!(r.embedding_cosine.mean > 0.99 && r.embedding_cosine.min <= r.embedding_cosine.mean);
    assert!((r.caption_exact_match - exact as f64 / samples.len() as f64).abs() < 1e-12);
    assert!(r.decoder.positions > 0 && r.decoder.kl_mean >= 0.0 && r.decoder.kl_max >= r.decoder.kl_mean);
    assert!((0.0..=1.0).contains(&r.decoder.top_token_agreement));
    assert!(r.int8_bytes < r.fp32_bytes);
}

fn host_tools(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("host-tools")).args(args).env("RUST_LOG", "error").output().expect("run host-tools");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn validate_verdict_and_exit_codes() {
    let (dir, fp32, int8) = bundles();
    let (fp, i8) = (fp32.to_str().unwrap(), int8.to_str().unwrap());
    let imgs = images_dir();
    let imgs = imgs.to_str().unwrap();
    let refs = dir.path().join("refs.tsv");
    std::fs::write(
        &refs,
        "astronaut.jpg\tA woman in a space suit.\nchelsea.png\ta cat\ncoffee.webp\ta cup of coffee\n",
    )
    .unwrap();
    let refs = refs.to_str().unwrap();

    // A threshold every int8 model meets: pass, exit 0, JSON with the reference metrics.
    let (code, out, err) = host_tools(&[
        "validate",
        fp,
        i8,
        "--images",
        imgs,
        "--references",
        refs,
        "--json",
        "--min-embedding-cosine",
        "0.5",
        "--min-token-agreement",
        "0",
        "--max-cider-drop",
        "1000",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pass"], true);
    assert_eq!(v["references"]["images"], 3);
    assert!(v["references"]["fp32"]["cider"].as_f64().unwrap() >= 0.0);

    // An impossible threshold: fail, exit 1, the table says which check failed.
    let (code, out, _) = host_tools(&["validate", fp, i8, "--images", imgs, "--min-embedding-cosine", "1.01"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL") && out.contains("embedding cosine"), "{out}");

    // A missing bundle and a bundle of another model: exit 2 with one line naming it.
    let missing = dir.path().join("nope");
    let (code, _, err) = host_tools(&["validate", fp, missing.to_str().unwrap(), "--images", imgs]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("nope"), "{err}");
    let other = export_reference(&reference("clipcap-transformer.json"), &fixtures(), &dir.path().join("other"));
    let (code, _, err) = host_tools(&["validate", fp, other.to_str().unwrap(), "--images", imgs]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a quantization"), "{err}");

    // The two bundles the wrong way round: refused, rather than a report with swapped columns.
    let (code, _, err) = host_tools(&["validate", i8, fp, "--images", imgs]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("give the fp32 bundle first"), "{err}");
}

#[test]
fn bench_reports_every_stage_and_peak_memory() {
    let (_, _, int8) = bundles();
    let opts = host_tools::bench::BenchOptions {
        bundle: int8.clone(),
        images: images_dir(),
        runs: 1,
        threads: 1,
        tokens: None,
        samples: false,
    };
    let r = host_tools::bench::bench(&opts).unwrap();
    assert_eq!(r.captions, images::load_dir(&images_dir()).unwrap().len());
    assert_eq!(r.precision, "int8");
    for s in [&r.preprocess, &r.image_encoder, &r.mapper, &r.decoder, &r.total] {
        assert!(s.median_ms > 0.0 && s.p90_ms >= s.median_ms, "{s:?}");
    }
    assert!(r.total.median_ms >= r.decoder.median_ms);
    assert!(r.tokens_per_s > 0.0);
    assert!(r.peak_rss_mib.is_some_and(|m| m > 1.0));
    assert!(r.loaded_rss_mib.is_some_and(|m| m > 1.0 && m <= r.peak_rss_mib.unwrap()));
    for s in [&r.first_token, &r.next_token] {
        assert!(s.median_ms >= 0.0 && s.p90_ms >= s.median_ms, "{s:?}");
    }
    assert!(r.first_token.median_ms <= r.decoder.median_ms);
    assert!(r.samples.is_empty());

    // --tokens forces exactly that many greedy tokens; --samples keeps every caption.
    let forced = host_tools::bench::BenchOptions { tokens: Some(7), samples: true, ..opts };
    let r = host_tools::bench::bench(&forced).unwrap();
    assert_eq!(r.samples.len(), r.captions);
    for s in &r.samples {
        assert_eq!(s.tokens, 7, "{}", s.image);
        assert!(s.first_token_ms > 0.0 && s.next_token_ms > 0.0 && s.first_token_ms <= s.decoder_ms, "{s:?}");
        let parts = s.preprocess_ms + s.image_encoder_ms + s.mapper_ms + s.decoder_ms;
        assert!((parts - s.total_ms).abs() < 1e-6, "{s:?}");
    }
}
