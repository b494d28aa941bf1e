//! DeCap against the PyTorch reference (`tests/fixtures/make_decap_fixtures.py`): CLIP text
//! embeddings, the support memory, the projection, and greedy captions of exported bundles.

use std::path::PathBuf;
use std::process::Command;

use edgecap_engine::memory::{MemoryValues, SupportMemory};
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy;
use edgecap_tests::{binary, cosine, fixtures, floats, ids, max_abs_diff, quantize_all_int8};
use host_tools::export_decap::{export_decap, DecapExportOptions};
use host_tools::memory::{build_memory, MemoryOptions};
use host_tools::projection::{compare_top_k, TopKAgreement};
use host_tools::text_encoder::TextEncoder;

fn decap_dir() -> PathBuf {
    fixtures().join("decap")
}

fn clip_bpe() -> PathBuf {
    fixtures().join("clip-tokenizer/bpe_simple_vocab_16e6.txt.gz")
}

fn reference() -> serde_json::Value {
    reference_in(&decap_dir())
}

fn reference_in(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

#[test]
fn text_embeddings_match_transformers() {
    let reference = reference();
    let encoder = TextEncoder::load(&decap_dir().join("clip-tiny"), Some(&clip_bpe())).unwrap();
    let lines: Vec<&str> =
        reference["text_embeds"]["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let got = encoder.embed(&lines).unwrap();
    let want = floats(&reference["text_embeds"]["embeds"]);
    let e = encoder.embed_dim();
    for (i, line) in lines.iter().enumerate() {
        let (g, w) = (&got[i * e..(i + 1) * e], &want[i * e..(i + 1) * e]);
        let cos = cosine(g, w);
        println!("{line:?}: cosine {cos:.7}, max abs diff {:.2e}", max_abs_diff(g, w));
        assert!(cos >= 0.9999, "{line:?}: cosine {cos}");
    }
    // One caption alone gives the same embedding as inside a padded batch.
    let alone = encoder.embed(&lines[..1]).unwrap();
    assert!(max_abs_diff(&alone, &got[..e]) < 1e-5);
}

fn memory_options(captions: PathBuf, out: PathBuf) -> MemoryOptions {
    MemoryOptions {
        clip: decap_dir().join("clip-tiny"),
        captions,
        tokenizer: Some(clip_bpe()),
        out,
        size: None,
        seed: 0,
        int8: false,
        batch: 50,
        progress: false,
    }
}

#[test]
fn memory_matches_the_reference_in_f32_and_int8() {
    let dir = tempfile::tempdir().unwrap();
    let want = floats(&reference()["memory"]);
    let mut opts = memory_options(decap_dir().join("captions.txt"), dir.path().join("m.safetensors"));
    let summary = build_memory(&opts).unwrap();
    assert_eq!(summary.rows * summary.dim, want.len());
    let memory = SupportMemory::read(&opts.out).unwrap();
    let got: Vec<f32> = (0..memory.rows).flat_map(|r| memory.row(r)).collect();
    let diff = max_abs_diff(&got, &want);
    println!("f32 memory: max abs diff {diff:.2e}");
    assert!(diff < 1e-5, "{diff}");

    opts.int8 = true;
    opts.out = dir.path().join("m8.safetensors");
    build_memory(&opts).unwrap();
    let q = SupportMemory::read(&opts.out).unwrap();
    assert!(matches!(q.values, MemoryValues::I8 { .. }));
    let got: Vec<f32> = (0..q.rows).flat_map(|r| q.row(r)).collect();
    let diff = max_abs_diff(&got, &want);
    println!("int8 memory: max abs diff {diff:.2e}");
    assert!(diff < 0.5 / 127.0 + 1e-6, "{diff}");
    assert!(
        std::fs::metadata(&opts.out).unwrap().len() * 3
            < std::fs::metadata(dir.path().join("m.safetensors")).unwrap().len()
    );
}

#[test]
fn sampled_memories_are_reproducible_subsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = memory_options(decap_dir().join("captions.txt"), dir.path().join("a.safetensors"));
    opts.size = Some(20);
    opts.seed = 3;
    build_memory(&opts).unwrap();
    let a = SupportMemory::read(&opts.out).unwrap();
    opts.out = dir.path().join("b.safetensors");
    build_memory(&opts).unwrap();
    assert_eq!(a, SupportMemory::read(&opts.out).unwrap());
    assert_eq!(a.rows, 20);
    let full = floats(&reference()["memory"]);
    for r in 0..a.rows {
        let row = a.row(r);
        assert!(full.chunks_exact(a.dim).any(|m| max_abs_diff(m, &row) < 1e-5), "row {r} is not a corpus row");
    }
}

#[test]
fn bad_corpora_get_one_line_errors_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty.txt", b"", "no captions"),
        ("blank.txt", b"\n  \n\t\n", "no captions"),
        ("latin1.txt", b"a cat\na caf\xe9 scene\n", "line 2: not UTF-8"),
    ];
    for (name, bytes, problem) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = dir.path().join(format!("{name}.safetensors"));
        let e = format!("{:#}", build_memory(&memory_options(path, out.clone())).unwrap_err());
        assert!(e.contains(name) && e.contains(problem), "{e}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), cases.iter().position(|c| c.0 == name).unwrap() + 1);
    }
}

fn export_options(out: PathBuf) -> DecapExportOptions {
    export_options_in(&decap_dir(), out)
}

fn export_options_in(dir: &std::path::Path, out: PathBuf) -> DecapExportOptions {
    let reference = reference_in(dir);
    DecapExportOptions {
        clip: dir.join("clip-tiny"),
        decap: dir.join("decap.pt"),
        memory: None,
        memory_captions: Some(dir.join("captions.txt")),
        tokenizer: Some(clip_bpe()),
        decoder_heads: Some(reference["decoder_heads"].as_u64().unwrap() as usize),
        temperature: reference["temperature"].as_f64().unwrap() as f32,
        top_k: 0,
        out,
        progress: false,
    }
}

/// The 224×224 crop PIL made (see clipcap_reference.rs for why crops, not files).
fn crop(file: &str) -> image::RgbImage {
    let name = std::path::Path::new(file).file_name().unwrap().to_string_lossy().into_owned();
    let (shape, data) = npy::read::<u8>(&fixtures().join("reference/pixels").join(format!("{name}.npy"))).unwrap();
    image::RgbImage::from_raw(shape[1] as u32, shape[0] as u32, data).unwrap()
}

fn relative_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    max_abs_diff(got, want) / scale
}

#[test]
fn exported_decap_bundles_caption_like_the_reference() {
    check_export(&decap_dir());
}

/// Full-size layouts (ViT-B/32 CLIP, the released decoder's shape); needs
/// `make_decap_fixtures.py --full DIR` (torch) first, so opt-in.
#[test]
#[ignore = "set EDGECAP_FULL_DECAP_FIXTURES to the output of make_decap_fixtures.py --full"]
fn full_size_decap_matches_pytorch() {
    let dir = PathBuf::from(std::env::var("EDGECAP_FULL_DECAP_FIXTURES").expect("EDGECAP_FULL_DECAP_FIXTURES"));
    check_export(&dir);
}

fn check_export(fixture_dir: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_in(fixture_dir);
    let manifest = export_decap(&export_options_in(fixture_dir, dir.path().join("bundle"))).unwrap();
    assert_eq!(manifest.model.vocab_size, 49408, "LM head trimmed to CLIP's vocabulary");
    let model = CaptionModel::load(&dir.path().join("bundle")).unwrap();
    let mut opts = model.default_options();
    assert_eq!((opts.max_tokens, opts.stop_token_ids.clone()), (30, vec![49407]));
    let (shape, logits) = npy::read::<f32>(&fixture_dir.join("logits_step0.npy")).unwrap();
    for (i, case) in reference["images"].as_array().unwrap().iter().enumerate() {
        let file = case["file"].as_str().unwrap();
        opts.projection_top_k = None;
        let t = model.trace(&crop(file), &opts).unwrap();
        let projected = t.projected.as_ref().expect("DeCap traces carry the projection");
        let mut stages = vec![
            ("image_embeds", &t.image_embeds, floats(&case["image_embeds"])),
            ("projected", projected, floats(&case["projected"])),
            ("prefix", &t.prefix, floats(&case["prefix"])),
        ];
        if i < shape[0] {
            stages.push(("logits_step0", &t.logits_step0, logits[i * shape[1]..(i + 1) * shape[1]].to_vec()));
        }
        for (stage, got, want) in stages {
            let rel = relative_diff(got, &want);
            println!("{file}: {stage} max abs diff {:.2e} (relative {rel:.1e})", max_abs_diff(got, &want));
            assert!(rel < 1e-4, "{file}: {stage} differs by {rel:.1e} relative");
        }
        assert_eq!(t.caption.tokens, ids(&case["greedy"]), "{file}: greedy tokens");
        assert!(!t.caption.text.contains("<|"), "start/end tokens are not caption text");

        opts.projection_top_k = Some(8);
        let top = model.trace(&crop(file), &opts).unwrap();
        assert!(max_abs_diff(top.projected.as_ref().unwrap(), &floats(&case["projected_top8"])) < 1e-5);
        assert_eq!(top.caption.tokens, ids(&case["greedy_top8"]), "{file}: top-8 greedy tokens");
    }
}

#[test]
fn a_memory_from_another_clip_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A memory 16 wide, while this CLIP embeds in 32 dimensions.
    let memory = SupportMemory { rows: 2, dim: 16, values: MemoryValues::F32(vec![0.25; 32]) };
    let path = dir.path().join("other-clip.safetensors");
    std::fs::write(&path, memory.to_bytes(&Default::default())).unwrap();
    let mut opts = export_options(dir.path().join("bundle"));
    (opts.memory, opts.memory_captions) = (Some(path), None);
    let e = format!("{:#}", export_decap(&opts).unwrap_err());
    assert!(e.contains("other-clip.safetensors") && e.contains("16 wide"), "{e}");
    assert!(!dir.path().join("bundle/bundle.toml").exists());
}

#[test]
fn caption_and_trace_commands_work_on_decap_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let mut opts = export_options(bundle.clone());
    // A memory file built beforehand, int8 this time.
    let memory = dir.path().join("m.safetensors");
    let mut mopts = memory_options(decap_dir().join("captions.txt"), memory.clone());
    mopts.int8 = true;
    build_memory(&mopts).unwrap();
    (opts.memory, opts.memory_captions) = (Some(memory), None);
    export_decap(&opts).unwrap();

    let image = fixtures().join("images/chelsea.png");
    let out = Command::new(binary("edgecap"))
        .args(["caption", "--json", "--bundle"])
        .arg(&bundle)
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = ids(&line["tokens"]);
    assert!(!tokens.is_empty() && tokens.iter().all(|&t| t < 49408), "{tokens:?}");

    let trace_dir = dir.path().join("trace");
    let out = Command::new(binary("host-tools"))
        .args(["trace", "--bundle"])
        .arg(&bundle)
        .arg("--image")
        .arg(&image)
        .arg("--out")
        .arg(&trace_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (shape, _) = npy::read::<f32>(&trace_dir.join("projected.npy")).unwrap();
    assert_eq!(shape, vec![1, 32]);
}

#[test]
fn top_k_projection_report_counts_changed_captions() {
    let dir = tempfile::tempdir().unwrap();
    export_decap(&export_options(dir.path().join("bundle"))).unwrap();
    let model = CaptionModel::load(&dir.path().join("bundle")).unwrap();
    let rows = model.memory.as_ref().unwrap().rows;
    let images = vec![
        fixtures().join("images/chelsea.png"),
        fixtures().join("bad/truncated.jpg"),
        fixtures().join("images/rocket.bmp"),
    ];
    let report = compare_top_k(&model, &images, &[1, rows]).unwrap();
    assert_eq!(report.rows, rows);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].1.contains("truncated.jpg"));
    // Top-"all" is the full projection: nothing may change.
    assert_eq!(report.per_k[1], TopKAgreement { k: rows, images: 2, changed: 0 });
    // Top-1 changes a caption exactly when its greedy tokens differ from the full projection's.
    let mut opts = model.default_options();
    let mut changed = 0;
    for path in [&images[0], &images[2]] {
        let rgb = edgecap_engine::image_load::load_rgb(path).unwrap();
        opts.projection_top_k = Some(0);
        let full = model.caption(&rgb, &opts).unwrap().tokens;
        opts.projection_top_k = Some(1);
        changed += usize::from(model.caption(&rgb, &opts).unwrap().tokens != full);
    }
    assert_eq!(report.per_k[0].changed, changed);
}

#[test]
fn decap_bundles_quantize_with_their_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = dir.path().join("fp32");
    export_decap(&export_options(fp32.clone())).unwrap();
    let int8 = dir.path().join("int8");
    quantize_all_int8(&fp32, &int8);
    let (a, b) = (CaptionModel::load(&fp32).unwrap(), CaptionModel::load(&int8).unwrap());
    assert_eq!(a.memory, b.memory, "the support memory travels unchanged");
    let rgb = crop("images/chelsea.png");
    let (ta, tb) = (a.trace(&rgb, &a.default_options()).unwrap(), b.trace(&rgb, &b.default_options()).unwrap());
    let cos = cosine(&ta.image_embeds, &tb.image_embeds);
    assert!(cos > 0.99, "int8 image embedding cosine {cos}");
    assert!(tb.caption.tokens.iter().all(|&t| t < 49408));
}
