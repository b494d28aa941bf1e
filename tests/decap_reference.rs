//! DeCap against the PyTorch reference (`tests/fixtures/make_decap_fixtures.py`): CLIP text
//! embeddings, the support memory, the projection, and greedy captions of exported bundles.

use std::path::PathBuf;

use edgecap_engine::memory::{MemoryValues, SupportMemory};
use edgecap_tests::{cosine, fixtures, floats, max_abs_diff};
use host_tools::memory::{build_memory, MemoryOptions};
use host_tools::text_encoder::TextEncoder;

fn decap_dir() -> PathBuf {
    fixtures().join("decap")
}

fn clip_bpe() -> PathBuf {
    fixtures().join("clip-tokenizer/bpe_simple_vocab_16e6.txt.gz")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(decap_dir().join("reference.json")).unwrap()).unwrap()
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
