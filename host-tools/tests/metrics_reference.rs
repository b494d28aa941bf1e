//! The caption metrics against pycocoevalcap's own scores on the same tokenised corpora
//! (`fixtures/metrics/make_metric_refs.py`).

use host_tools::metrics::{score, tokenize::normalize};
use serde_json::Value;

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

#[test]
fn metrics_agree_with_pycocoevalcap() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics/metrics.json");
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture")).expect("json");
    let cases = data["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for (i, case) in cases.iter().enumerate() {
        let candidates = strings(&case["candidates"]);
        let references: Vec<Vec<String>> = case["references"].as_array().unwrap().iter().map(strings).collect();
        let got = score(&candidates, &references);
        let want_bleu: Vec<f64> = case["bleu"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (k, (g, w)) in got.bleu.iter().zip(&want_bleu).enumerate() {
            assert!((g - w).abs() < 1e-6, "case {i}: BLEU-{} {g} vs pycocoevalcap {w}", k + 1);
        }
        let w = case["rouge_l"].as_f64().unwrap();
        assert!((got.rouge_l - w).abs() < 1e-6, "case {i}: ROUGE-L {} vs {w}", got.rouge_l);
        let w = case["cider"].as_f64().unwrap();
        assert!((got.cider - w).abs() < 1e-6, "case {i}: CIDEr {} vs {w}", got.cider);
    }
}

#[test]
fn normalisation_matches_what_the_fixtures_assume() {
    // The fixtures are already normalised: normalising again must not change them.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics/metrics.json");
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in data["cases"].as_array().unwrap() {
        for c in strings(&case["candidates"]) {
            assert_eq!(normalize(&c), c);
        }
    }
    assert_eq!(normalize("A Cat, on the MAT."), "a cat on the mat");
}
