//! GPT-2 tokenizer parity with Hugging Face's `GPT2TokenizerFast`, and its errors on bad files.
//!
//! Reference ids come from `tests/fixtures/tokenizer/gpt2_cases.json`, written by
//! `make_tokenizer_cases.py` from the committed GPT-2 vocabulary; `tokenizer.json` beside it is the
//! same tokenizer saved by Hugging Face. No Python runs at test time.

use std::path::{Path, PathBuf};

use edgecap_engine::tokenizer::{Gpt2Tokenizer, TokenizerError};
use serde::Deserialize;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn vocab_path() -> PathBuf {
    fixtures().join("gpt2-tokenizer/vocab.json")
}

fn merges_path() -> PathBuf {
    fixtures().join("gpt2-tokenizer/merges.txt")
}

fn tokenizer_json_path() -> PathBuf {
    fixtures().join("tokenizer/tokenizer.json")
}

#[derive(Deserialize)]
struct EncodeCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    text: String,
}

#[derive(Deserialize)]
struct VariantCases {
    add_prefix_space: Vec<EncodeCase>,
    strip_token: Vec<EncodeCase>,
}

#[derive(Deserialize)]
struct Cases {
    eos_token_id: u32,
    vocab_size: usize,
    encode_cases: Vec<EncodeCase>,
    decode_cases: Vec<DecodeCase>,
    variant_cases: VariantCases,
}

fn cases() -> Cases {
    let path = fixtures().join("tokenizer/gpt2_cases.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn gpt2() -> Gpt2Tokenizer {
    Gpt2Tokenizer::from_files(&vocab_path(), &merges_path()).unwrap()
}

fn short(text: &str) -> String {
    let head: String = text.chars().take(40).collect();
    format!("{head:?} ({} chars)", text.chars().count())
}

/// Every encode case gives the reference ids and decodes back to its text.
fn assert_matches_reference(tok: &Gpt2Tokenizer, encode_cases: &[EncodeCase]) {
    let mut failures = Vec::new();
    for case in encode_cases {
        let ids = tok.encode(&case.text);
        if ids != case.ids {
            failures.push(format!("{}: got {:?}, want {:?}", short(&case.text), &ids, &case.ids));
        }
        let back = tok.decode(&ids).unwrap();
        if back != case.text {
            failures.push(format!("{}: round trip gave {}", short(&case.text), short(&back)));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn from_files_matches_hugging_face_ids() {
    let cases = cases();
    assert!(cases.encode_cases.len() >= 60);
    let tok = gpt2();
    assert_eq!(tok.vocab_size(), cases.vocab_size);
    assert_eq!(tok.eos_token_id(), Some(cases.eos_token_id));
    assert_matches_reference(&tok, &cases.encode_cases);
}

#[test]
fn from_tokenizer_json_matches_hugging_face_ids() {
    let cases = cases();
    let tok = Gpt2Tokenizer::from_tokenizer_json(&tokenizer_json_path()).unwrap();
    assert_eq!(tok.vocab_size(), cases.vocab_size);
    assert_eq!(tok.eos_token_id(), Some(cases.eos_token_id));
    assert_matches_reference(&tok, &cases.encode_cases);
}

/// The committed tokenizer.json stores merges as pairs; older files store "a b" strings.
#[test]
fn tokenizer_json_with_string_merges_matches_too() {
    let dir = tempfile::tempdir().unwrap();
    let json = edit_tokenizer_json(|j| {
        let merges = j["model"]["merges"].as_array_mut().unwrap();
        for merge in merges.iter_mut() {
            let pair = merge.as_array().unwrap();
            *merge = Value::String(format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()));
        }
    });
    let path = write(dir.path(), "tokenizer.json", &json);
    let tok = Gpt2Tokenizer::from_tokenizer_json(&path).unwrap();
    assert_matches_reference(&tok, &cases().encode_cases);
}

#[test]
fn tokenizer_json_add_prefix_space_matches_hugging_face() {
    let dir = tempfile::tempdir().unwrap();
    let json = edit_tokenizer_json(|j| j["pre_tokenizer"]["add_prefix_space"] = Value::Bool(true));
    let tok = Gpt2Tokenizer::from_tokenizer_json(&write(dir.path(), "tokenizer.json", &json)).unwrap();
    for case in cases().variant_cases.add_prefix_space {
        assert_eq!(tok.encode(&case.text), case.ids, "text {:?}", case.text);
    }
}

#[test]
fn tokenizer_json_lstrip_rstrip_added_token_matches_hugging_face() {
    let dir = tempfile::tempdir().unwrap();
    let json = edit_tokenizer_json(|j| {
        let added = j["added_tokens"].as_array_mut().unwrap();
        added.push(serde_json::json!({"id": 50257, "content": "[X]", "single_word": false,
            "lstrip": true, "rstrip": true, "normalized": false, "special": true}));
    });
    let tok = Gpt2Tokenizer::from_tokenizer_json(&write(dir.path(), "tokenizer.json", &json)).unwrap();
    assert_eq!(tok.vocab_size(), 50258);
    assert_eq!(tok.token_to_id("[X]"), Some(50257));
    for case in cases().variant_cases.strip_token {
        assert_eq!(tok.encode(&case.text), case.ids, "text {:?}", case.text);
    }
    assert_eq!(tok.decode(&[64, 50257, 65]).unwrap(), "a[X]b");
}

#[test]
fn decode_matches_hugging_face_including_cut_characters() {
    let tok = gpt2();
    let cases = cases();
    assert!(cases.decode_cases.iter().any(|c| c.text.contains('\u{fffd}')));
    for case in &cases.decode_cases {
        assert_eq!(tok.decode(&case.ids).unwrap(), case.text, "ids {:?}", case.ids);
    }
}

#[test]
fn decode_names_an_unknown_id() {
    let tok = gpt2();
    let err = tok.decode(&[15496, 50257]).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownId { id: 50257, .. }), "{err:?}");
    assert_eq!(err.to_string(), "token id 50257 is not in the tokenizer's vocabulary (50257 tokens)");
    assert!(tok.decode(&[u32::MAX]).is_err());
}

#[test]
fn token_lookup() {
    let tok = gpt2();
    assert_eq!(tok.token_to_id("\u{120}cat"), Some(3797)); // "Ġcat" = " cat"
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(50256));
    assert_eq!(tok.token_to_id(" cat"), None);
    assert_eq!(tok.encode(" cat"), vec![3797]);
}

/// Long inputs encode correctly (speed belongs to benchmarks, not tests).
#[test]
fn long_inputs_encode_correctly() {
    let tok = gpt2();
    let ids = tok.encode(&"a".repeat(20_000));
    assert_eq!(ids.len(), 5_000); // 24794 is "aaaa"
    assert!(ids.iter().all(|&id| id == 24794));
    let captions = "A man riding a wave on top of a surfboard. ".repeat(100);
    let ids = tok.encode(&captions);
    assert_eq!(tok.decode(&ids).unwrap(), captions);
}

// ---- bad files ----

/// A named edit of the reference tokenizer.json and a string its error message must contain.
type EditCase = (&'static str, Box<dyn FnOnce(&mut Value)>, &'static str);

fn edit_tokenizer_json(edit: impl FnOnce(&mut Value)) -> String {
    let text = std::fs::read_to_string(tokenizer_json_path()).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    edit(&mut json);
    json.to_string()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// The error message is one line that names the file.
fn assert_one_line_naming(err: &TokenizerError, path: &Path, needle: &str) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    assert!(msg.starts_with(&path.display().to_string()), "message does not name {}: {msg}", path.display());
    assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let err = Gpt2Tokenizer::from_files(&missing, &merges_path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Read { .. }));
    assert_one_line_naming(&err, &missing, "cannot read");
    let missing_merges = dir.path().join("merges.txt");
    let err = Gpt2Tokenizer::from_files(&vocab_path(), &missing_merges).unwrap_err();
    assert_one_line_naming(&err, &missing_merges, "cannot read");
    let err = Gpt2Tokenizer::from_tokenizer_json(&missing).unwrap_err();
    assert_one_line_naming(&err, &missing, "cannot read");
}

#[test]
fn truncated_json_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = std::fs::read_to_string(vocab_path()).unwrap();
    let truncated = write(dir.path(), "vocab.json", &vocab[..vocab.len() / 2]);
    let err = Gpt2Tokenizer::from_files(&truncated, &merges_path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Json { .. }), "{err:?}");
    assert_one_line_naming(&err, &truncated, "invalid JSON");

    let json = std::fs::read_to_string(tokenizer_json_path()).unwrap();
    let truncated = write(dir.path(), "tokenizer.json", &json[..json.len() - 10]);
    let err = Gpt2Tokenizer::from_tokenizer_json(&truncated).unwrap_err();
    assert_one_line_naming(&err, &truncated, "invalid JSON");

    let wrong_shape = write(dir.path(), "list.json", "[1, 2, 3]");
    let err = Gpt2Tokenizer::from_files(&wrong_shape, &merges_path()).unwrap_err();
    assert_one_line_naming(&err, &wrong_shape, "invalid JSON");
    let negative = write(dir.path(), "neg.json", r#"{"a": -1}"#);
    let err = Gpt2Tokenizer::from_files(&negative, &merges_path()).unwrap_err();
    assert_one_line_naming(&err, &negative, "invalid JSON");
}

#[test]
fn bad_merge_lines_are_reported_with_their_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let three = write(dir.path(), "three.txt", "#version: 0.2\n\u{120} t\n\u{120} a\nh e l\n");
    let err = Gpt2Tokenizer::from_files(&vocab_path(), &three).unwrap_err();
    assert!(matches!(err, TokenizerError::BadMerge { .. }), "{err:?}");
    assert_one_line_naming(&err, &three, "line 4: merge rule \"h e l\" is not two tokens");

    let one = write(dir.path(), "one.txt", "#version: 0.2\n\u{120} t\nhe\n");
    let err = Gpt2Tokenizer::from_files(&vocab_path(), &one).unwrap_err();
    assert_one_line_naming(&err, &one, "line 3");

    let unknown = write(dir.path(), "unknown.txt", "\u{120} t\nzzqx\u{1f600} a\n");
    let err = Gpt2Tokenizer::from_files(&vocab_path(), &unknown).unwrap_err();
    assert!(matches!(err, TokenizerError::MergeTokenMissing { .. }), "{err:?}");
    assert_one_line_naming(&err, &unknown, "line 2: merge rule uses or produces \"zzqx\u{1f600}\"");

    // Both halves exist but their concatenation does not.
    let no_result = write(dir.path(), "no_result.txt", "\u{120} t\nq \u{120}cat\n");
    let err = Gpt2Tokenizer::from_files(&vocab_path(), &no_result).unwrap_err();
    assert_one_line_naming(&err, &no_result, "line 2: merge rule uses or produces \"q\u{120}cat\"");

    // Not UTF-8.
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [0xff, 0xfe, b' ', b'a', b'\n']).unwrap();
    let err = Gpt2Tokenizer::from_files(&vocab_path(), &binary).unwrap_err();
    assert_one_line_naming(&err, &binary, "cannot read");
}

#[test]
fn vocabularies_that_are_not_byte_level_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let merges = write(dir.path(), "merges.txt", "#version: 0.2\n");
    let small = write(dir.path(), "small.json", r#"{"a": 0, "b": 1}"#);
    let err = Gpt2Tokenizer::from_files(&small, &merges).unwrap_err();
    assert!(matches!(err, TokenizerError::Invalid { .. }), "{err:?}");
    assert_one_line_naming(&err, &small, "lacks the byte-level token");

    // All 256 byte tokens, but two tokens share an id.
    let mut vocab = serde_json::Map::new();
    for (id, c) in byte_symbol_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), Value::from(id));
    }
    vocab.insert("ab".into(), Value::from(5));
    let duplicate = write(dir.path(), "dup.json", &Value::Object(vocab).to_string());
    let err = Gpt2Tokenizer::from_files(&duplicate, &merges).unwrap_err();
    assert_one_line_naming(&err, &duplicate, "id 5 is given to two tokens");
}

/// The 256 byte symbols in GPT-2 order, computed independently of the engine.
fn byte_symbol_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut moved = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                moved += 1;
                char::from_u32(255 + moved).unwrap()
            }
        })
        .collect()
}

/// A tiny synthetic tokenizer.json: the 256 byte tokens plus "ab" and "abc", "a b" string merges.
#[test]
fn small_synthetic_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut vocab = serde_json::Map::new();
    for (id, c) in byte_symbol_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), Value::from(id));
    }
    vocab.insert("ab".into(), Value::from(256));
    vocab.insert("abc".into(), Value::from(257));
    let json = serde_json::json!({
        "added_tokens": [{"id": 258, "content": "<eot>", "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", "ab c"]},
    });
    let path = write(dir.path(), "tokenizer.json", &json.to_string());
    let tok = Gpt2Tokenizer::from_tokenizer_json(&path).unwrap();
    assert_eq!(tok.vocab_size(), 259);
    assert_eq!(tok.eos_token_id(), None);
    // Ids of byte tokens equal the byte here. "abcab" is one word: a+b first (rank 0), then ab+c;
    // " ab" is the space byte then "ab".
    assert_eq!(tok.encode("abcab<eot> ab"), vec![257, 256, 258, 32, 256]);
    assert_eq!(tok.decode(&[257, 258, 33, 0]).unwrap(), "abc<eot>!\0");
}

#[test]
fn unsupported_tokenizer_json_features_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<EditCase> = vec![
        ("normalizer", Box::new(|j| j["normalizer"] = serde_json::json!({"type": "NFC"})), "normalizer \"NFC\""),
        ("model", Box::new(|j| j["model"]["type"] = Value::from("WordPiece")), "model type \"WordPiece\""),
        ("dropout", Box::new(|j| j["model"]["dropout"] = Value::from(0.1)), "model.dropout"),
        (
            "pretok",
            Box::new(|j| j["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"})),
            "pre_tokenizer \"Whitespace\"",
        ),
        ("regex", Box::new(|j| j["pre_tokenizer"]["use_regex"] = Value::from(false)), "use_regex false"),
        ("decoder", Box::new(|j| j["decoder"] = Value::Null), "no decoder"),
        ("single_word", Box::new(|j| j["added_tokens"][0]["single_word"] = Value::from(true)), "single_word true"),
    ];
    for (name, edit, needle) in cases {
        let path = write(dir.path(), &format!("{name}.json"), &edit_tokenizer_json(edit));
        let err = Gpt2Tokenizer::from_tokenizer_json(&path).unwrap_err();
        assert!(matches!(err, TokenizerError::Unsupported { .. }), "{name}: {err:?}");
        assert_one_line_naming(&err, &path, needle);
    }
}

#[test]
fn malformed_tokenizer_json_merges_and_added_tokens_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<EditCase> = vec![
        (
            "triple",
            Box::new(|j| j["model"]["merges"][3] = serde_json::json!(["a", "b", "c"])),
            "model.merges[3]: merge rule",
        ),
        ("number", Box::new(|j| j["model"]["merges"][0] = Value::from(7)), "model.merges[0]: merge rule \"7\""),
        (
            "missing",
            Box::new(|j| j["model"]["merges"][2] = serde_json::json!(["zzqx", "y"])),
            "model.merges[2]: merge rule uses or produces \"zzqx\"",
        ),
        ("empty_added", Box::new(|j| j["added_tokens"][0]["content"] = Value::from("")), "empty content"),
        (
            "added_id",
            Box::new(|j| j["added_tokens"][0]["id"] = Value::from(7)),
            "has id 7 but the vocabulary gives it id 50256",
        ),
        ("no_model", Box::new(|j| j.as_object_mut().unwrap().remove("model").map(drop).unwrap_or(())), "missing field"),
    ];
    for (name, edit, needle) in cases {
        let path = write(dir.path(), &format!("{name}.json"), &edit_tokenizer_json(edit));
        let err = Gpt2Tokenizer::from_tokenizer_json(&path).unwrap_err();
        assert_one_line_naming(&err, &path, needle);
    }
}
