//! Shared helpers for the checkpoint reader tests: fixture paths and the exact values PyTorch
//! wrote next to them (`tests/fixtures/checkpoint/expected.json`, from `make_checkpoints.py`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use host_tools::tensor::TensorMap;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoint").join(name)
}

/// `(shape, f32 bit patterns)` per tensor name, as torch converted them to float32.
pub fn expected(file: &str) -> BTreeMap<String, (Vec<usize>, Vec<u32>)> {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json (run make_checkpoints.py)");
    let json: serde_json::Value = serde_json::from_str(&text).expect("expected.json is JSON");
    let tensors = json[file].as_object().unwrap_or_else(|| panic!("no expected values for {file}"));
    tensors
        .iter()
        .map(|(name, t)| {
            let shape = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let bits = t["bits"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            (name.clone(), (shape, bits))
        })
        .collect()
}

/// Same names, same shapes, bit-identical values (any NaN matches any NaN).
pub fn assert_matches_expected(file: &str, map: &TensorMap) {
    let want = expected(file);
    let got_names: Vec<&str> = map.names().collect();
    let want_names: Vec<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(got_names, want_names, "{file}: tensor names");
    for (name, (shape, bits)) in &want {
        let t = map.get(name).unwrap();
        assert_eq!(&t.shape, shape, "{file}: shape of {name}");
        assert_eq!(t.data.len(), bits.len(), "{file}: length of {name}");
        for (i, (&got, &want_bits)) in t.data.iter().zip(bits).enumerate() {
            let want_value = f32::from_bits(want_bits);
            let same = if want_value.is_nan() { got.is_nan() } else { got.to_bits() == want_bits };
            assert!(
                same,
                "{file}: {name}[{i}] = {got:e} ({:#010x}), torch says {want_value:e} ({want_bits:#010x})",
                got.to_bits()
            );
        }
    }
}

/// The error's message: one line, starting with the path given.
pub fn one_line_message(err: &dyn std::error::Error, path: &std::path::Path) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    let prefix = format!("{}: ", path.display());
    assert!(msg.starts_with(&prefix), "error does not start with the path: {msg}");
    msg
}
