//! DeCap against the PyTorch reference (`tests/fixtures/make_decap_fixtures.py`): CLIP text
//! embeddings, the support memory, the projection, and greedy captions of exported bundles.

use std::path::PathBuf;

use edgecap_tests::{cosine, fixtures, floats, max_abs_diff};
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
