//! safetensors files and transformers `save_pretrained` directories.

mod checkpoint_support;

use checkpoint_support::{assert_matches_expected, fixture, one_line_message};
use host_tools::checkpoint::{read_hf_dir, read_safetensors, read_tensors, CheckpointError};

#[test]
fn safetensors_f16_bf16_f32_and_ints_match_pytorch() {
    let path = fixture("weights.safetensors");
    let map = read_safetensors(&path).unwrap();
    assert_matches_expected("weights.safetensors", &map);
    assert_eq!(map.get("flag").unwrap().data, vec![1.0, 0.0]);
    assert_eq!(map.get_shaped("scalar", &[]).unwrap().data, vec![0.5]);
    // Sniffing picks the same reader.
    assert_matches_expected("weights.safetensors", &read_tensors(&path).unwrap());
}

#[test]
fn sharded_hf_directory_merges_its_shards() {
    let map = read_hf_dir(&fixture("hf_sharded")).unwrap();
    assert_matches_expected("hf_sharded", &map);
}

#[test]
fn hf_directory_with_single_safetensors_or_pytorch_bin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("weights.safetensors"), dir.path().join("model.safetensors")).unwrap();
    assert_matches_expected("weights.safetensors", &read_hf_dir(dir.path()).unwrap());

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("dtypes.pt"), dir.path().join("pytorch_model.bin")).unwrap();
    assert_matches_expected("dtypes.pt", &read_hf_dir(dir.path()).unwrap());
}

#[test]
fn hf_directory_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_hf_dir(dir.path()).unwrap_err();
    let msg = one_line_message(&err, dir.path());
    assert!(msg.contains("no model.safetensors"), "{msg}");

    // An index naming a tensor its shard lacks.
    let shard = "model-00001-of-00001.safetensors";
    std::fs::copy(fixture("weights.safetensors"), dir.path().join(shard)).unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, format!(r#"{{"weight_map": {{"half": "{shard}", "ghost": "{shard}"}}}}"#)).unwrap();
    let err = read_hf_dir(dir.path()).unwrap_err();
    let msg = one_line_message(&err, &index);
    assert!(msg.contains("`ghost` is listed in weight_map but absent"), "{msg}");

    // Shards must sit next to the index.
    std::fs::write(&index, r#"{"weight_map": {"half": "../elsewhere.safetensors"}}"#).unwrap();
    let msg = one_line_message(&read_hf_dir(dir.path()).unwrap_err(), &index);
    assert!(msg.contains("not a plain file name"), "{msg}");

    let file = fixture("weights.safetensors");
    let msg = one_line_message(&read_hf_dir(&file).unwrap_err(), &file);
    assert!(msg.contains("not a directory"), "{msg}");
}

#[test]
fn damaged_safetensors_are_errors() {
    let full = std::fs::read(fixture("weights.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.safetensors");
    for len in [0, 7, 8, 20, full.len() / 2, full.len() - 1] {
        std::fs::write(&path, &full[..len]).unwrap();
        let err = read_safetensors(&path).unwrap_err();
        one_line_message(&err, &path);
        let err = read_tensors(&path).unwrap_err();
        assert!(matches!(err, CheckpointError::UnknownFormat { .. } | CheckpointError::Safetensors { .. }), "{err}");
    }
    // A valid header whose data section is too short.
    let header_len = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    std::fs::write(&path, &full[..8 + header_len + 4]).unwrap();
    let err = read_tensors(&path).unwrap_err();
    assert!(matches!(err, CheckpointError::Safetensors { .. }), "{err}");
    one_line_message(&err, &path);
}
