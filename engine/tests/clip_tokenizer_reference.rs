//! The CLIP tokenizer gives transformers' `CLIPTokenizer` ids on varied text (cases made by
//! `tests/fixtures/tokenizer/make_clip_tokenizer_cases.py`), from either vocabulary source.

use std::io::Read;
use std::path::{Path, PathBuf};

use edgecap_engine::tokenizer::{clip_vocab_from_bpe, ClipTokenizer, CLIP_CONTEXT_LENGTH};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn bpe_text() -> (PathBuf, String) {
    let path = fixtures().join("clip-tokenizer/bpe_simple_vocab_16e6.txt.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
    (path, text)
}

fn cases() -> serde_json::Value {
    let path = fixtures().join("tokenizer/clip_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check(tok: &ClipTokenizer) {
    let cases = cases();
    assert_eq!(tok.vocab_size() as u64, cases["vocab_size"].as_u64().unwrap());
    assert_eq!((tok.start_token_id(), tok.end_token_id()), (49406, 49407));
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text), ids(&case["ids"]), "encode {text:?}");
        let model_ids = tok.encode_for_model(text);
        assert_eq!(model_ids, ids(&case["model_ids"]), "encode_for_model {text:?}");
        assert!(model_ids.len() <= CLIP_CONTEXT_LENGTH);
        assert_eq!(tok.decode(&model_ids).unwrap(), case["decoded"].as_str().unwrap(), "decode {text:?}");
    }
}

#[test]
fn open_clip_vocabulary_matches_transformers() {
    let (path, text) = bpe_text();
    check(&ClipTokenizer::from_bpe_vocab(&text, &path).unwrap());
}

#[test]
fn hf_vocab_and_merges_files_match_transformers() {
    let (path, text) = bpe_text();
    let (vocab, merges) = clip_vocab_from_bpe(&text, &path).unwrap();
    // OpenAI's numbering of the byte tokens: printable bytes first, in symbol order.
    assert_eq!((vocab["!"], vocab["a"], vocab["a</w>"], vocab["Ā"]), (0, 64, 320, 188));
    let dir = tempfile::tempdir().unwrap();
    let (v, m) = (dir.path().join("vocab.json"), dir.path().join("merges.txt"));
    std::fs::write(&v, serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(&m, merges).unwrap();
    check(&ClipTokenizer::from_files(&v, &m).unwrap());
}

#[test]
fn bad_vocabularies_are_named() {
    let (path, text) = bpe_text();
    let short: String = text.lines().take(1000).collect::<Vec<_>>().join("\n");
    let err = ClipTokenizer::from_bpe_vocab(&short, &path).unwrap_err().to_string();
    assert!(err.contains("bpe_simple_vocab_16e6") && err.contains("merge rules"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (v, m) = (dir.path().join("vocab.json"), dir.path().join("merges.txt"));
    std::fs::write(&v, r#"{"a": 0, "b</w>": 1}"#).unwrap();
    std::fs::write(&m, "#version: 0.2\n").unwrap();
    let err = ClipTokenizer::from_files(&v, &m).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("not a CLIP vocabulary"), "{err}");
    let err = ClipTokenizer::from_files(&dir.path().join("missing.json"), &m).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
    assert!(!err.contains('\n'));
}

#[test]
fn unknown_ids_are_refused_when_decoding() {
    let (path, text) = bpe_text();
    let tok = ClipTokenizer::from_bpe_vocab(&text, &path).unwrap();
    let err = tok.decode(&[320, 60000]).unwrap_err().to_string();
    assert!(err.contains("60000"), "{err}");
}
