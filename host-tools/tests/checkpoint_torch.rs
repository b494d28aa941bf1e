//! The torch checkpoint reader against files written by real `torch.save` (see
//! `tests/fixtures/checkpoint/make_checkpoints.py`), plus hostile and broken inputs.

mod checkpoint_support;

use std::path::Path;

use checkpoint_support::{assert_matches_expected, fixture, one_line_message};
use host_tools::checkpoint::{read_tensors, read_torch, CheckpointError};

#[test]
fn every_dtype_and_layout_matches_pytorch_bit_for_bit() {
    let map = read_torch(&fixture("dtypes.pt")).unwrap();
    assert_matches_expected("dtypes.pt", &map);
    // Spot checks that do not depend on the JSON: layout handling and conversions.
    let transposed = map.get("transposed").unwrap();
    assert_eq!(transposed.shape, vec![5, 3]);
    assert_eq!(&transposed.data[..6], &[0., 5., 10., 1., 6., 11.]);
    assert_eq!(map.get("shared.column").unwrap().data, vec![1.5, 5.5, 9.5, 13.5, 17.5]);
    assert_eq!(map.get("shared.block").unwrap().data, vec![8.5, 9.5, 10.5, 12.5, 13.5, 14.5]);
    let scalar = map.get("scalar").unwrap();
    assert_eq!((scalar.shape.clone(), scalar.data.clone()), (vec![], vec![-7.25]));
    assert_eq!(map.get("empty").unwrap().shape, vec![0, 3]);
    assert_eq!(map.get("bool").unwrap().data, vec![1., 0., 1., 0., 0., 1.]);
    assert_eq!(map.get("u8").unwrap().data, vec![0., 200., 255.]);
    assert_eq!(map.get("param").unwrap().data, vec![1.5, -2.0]);
}

#[test]
fn protocol_4_pickles_read_the_same_and_skip_non_tensors() {
    let map = read_tensors(&fixture("protocol4.pt")).unwrap();
    assert_matches_expected("protocol4.pt", &map);
    assert!(!map.contains("blob") && !map.contains("count") && !map.contains("name"));
}

#[test]
fn unsigned_dtypes_saved_with_rebuild_tensor_v3() {
    let map = read_torch(&fixture("new_dtypes.pt")).unwrap();
    assert_matches_expected("new_dtypes.pt", &map);
    assert_eq!(map.get("u16").unwrap().data, vec![0., 1., 65535.]);
    assert_eq!(map.get("u16_t").unwrap().data, vec![1., 4., 2., 5., 3., 6.]);
}

#[test]
fn deflate_compressed_archive_reads_the_same() {
    assert_matches_expected("dtypes.pt", &read_tensors(&fixture("deflated.pt")).unwrap());
}

#[test]
fn nested_state_dict_and_model_keys_are_read_through() {
    for file in ["nested.pt", "nested_model.pt"] {
        let map = read_tensors(&fixture(file)).unwrap();
        assert_matches_expected(file, &map);
    }
}

#[test]
fn clipcap_shaped_checkpoint_reads_with_its_buffers() {
    let map = read_tensors(&fixture("clipcap_like.pt")).unwrap();
    assert_matches_expected("clipcap_like.pt", &map);
    assert_eq!(map.get_shaped("clip_project.model.0.weight", &[8, 6]).unwrap().len(), 48);
    assert_eq!(map.get_shaped("gpt.transformer.h.0.attn.c_attn.weight", &[8, 24]).unwrap().len(), 192);
    // The causal-mask buffer: bool [1, 1, 8, 8] lower triangle → 0/1.
    let mask = map.get_shaped("gpt.transformer.h.0.attn.bias", &[1, 1, 8, 8]).unwrap();
    for r in 0..8 {
        for c in 0..8 {
            assert_eq!(mask.data[r * 8 + c], if c <= r { 1.0 } else { 0.0 }, "mask[{r}][{c}]");
        }
    }
    let masked_bias = map.get_shaped("gpt.transformer.h.0.attn.masked_bias", &[]).unwrap();
    assert_eq!(masked_bias.data, vec![-1e4]);
    // lm_head is tied to wte: one storage in the file, two equal tensors here.
    assert_eq!(map.get("gpt.lm_head.weight").unwrap(), map.get("gpt.transformer.wte.weight").unwrap());
    let mapper = map.strip_prefix("clip_project.");
    assert_eq!(
        mapper.names().collect::<Vec<_>>(),
        ["model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight"]
    );
}

#[test]
fn legacy_format_is_refused_with_advice() {
    let path = fixture("legacy.pt");
    for result in [read_tensors(&path), read_torch(&path)] {
        let err = result.unwrap_err();
        assert!(matches!(err, CheckpointError::LegacyTorch { .. }), "{err}");
        let msg = one_line_message(&err, &path);
        assert!(msg.ends_with("legacy (pre-1.6) torch format: re-save it with a recent torch"), "{msg}");
    }
}

const PWNED_MARKER: &str = "/tmp/edgecap_checkpoint_pwned";

#[test]
fn os_system_global_is_refused_and_nothing_runs() {
    let _ = std::fs::remove_file(PWNED_MARKER);
    let path = fixture("malicious.pt");
    let err = read_tensors(&path).unwrap_err();
    assert!(matches!(&err, CheckpointError::RefusedGlobal { name, .. } if name == "os.system"), "{err}");
    let msg = one_line_message(&err, &path);
    assert_eq!(
        msg,
        format!("{}: refusing pickle global os.system (only tensors and plain containers are read)", path.display())
    );
    assert!(!Path::new(PWNED_MARKER).exists(), "the payload ran");
}

#[test]
fn stack_global_eval_is_refused() {
    let path = fixture("malicious_p4.pt");
    let err = read_torch(&path).unwrap_err();
    assert!(matches!(&err, CheckpointError::RefusedGlobal { name, .. } if name == "builtins.eval"), "{err}");
    one_line_message(&err, &path);
    assert!(!Path::new(PWNED_MARKER).exists(), "the payload ran");
}

#[test]
fn storage_shorter_than_its_tensor_is_an_error() {
    let path = fixture("short_storage.pt");
    let err = read_tensors(&path).unwrap_err();
    let msg = one_line_message(&err, &path);
    assert!(msg.contains("tensor `w`: reads element 3 but storage data/0 holds only 3 elements"), "{msg}");
}

#[test]
fn empty_and_text_files_are_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.pt");
    std::fs::write(&text, "these are not the weights you are looking for\n").unwrap();
    for path in [&empty, &text] {
        let err = read_tensors(path).unwrap_err();
        assert!(matches!(err, CheckpointError::UnknownFormat { .. }), "{err}");
        let msg = one_line_message(&err, path);
        assert!(msg.contains("not a PyTorch checkpoint or safetensors file"), "{msg}");
    }
    let err = read_tensors(&dir.path().join("missing.pt")).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
}

#[test]
fn zip_without_torch_layout_is_not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photos.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    writer.start_file("photos/cat.jpg", options).unwrap();
    std::io::Write::write_all(&mut writer, b"not really a cat").unwrap();
    writer.finish().unwrap();
    let err = read_tensors(&path).unwrap_err();
    let msg = one_line_message(&err, &path);
    assert!(
        msg.contains("not a PyTorch checkpoint or safetensors file (a zip archive without <archive>/data.pkl)"),
        "{msg}"
    );
}

#[test]
fn truncated_checkpoints_fail_cleanly_at_every_length() {
    let full = std::fs::read(fixture("dtypes.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pt");
    let lengths = (1..full.len()).step_by(37).chain([full.len() - 1, full.len() - 22, 4]);
    for len in lengths {
        std::fs::write(&path, &full[..len]).unwrap();
        let err = read_tensors(&path).expect_err(&format!("a {len}-byte prefix read fine"));
        one_line_message(&err, &path);
    }
}

#[test]
fn corrupted_storage_bytes_fail_the_crc_check() {
    let mut bytes = std::fs::read(fixture("dtypes.pt")).unwrap();
    let start = {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(fixture("dtypes.pt")).unwrap()).unwrap();
        let entry = archive.by_name("dtypes/data/0").unwrap();
        entry.data_start() as usize
    };
    bytes[start + 1] ^= 0x40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.pt");
    std::fs::write(&path, &bytes).unwrap();
    let err = read_torch(&path).unwrap_err();
    let msg = one_line_message(&err, &path);
    assert!(msg.to_lowercase().contains("checksum"), "{msg}");
}

#[test]
fn random_byte_flips_never_panic() {
    let original = std::fs::read(fixture("clipcap_like.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.pt");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut failures = 0;
    for _ in 0..400 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bytes = original.clone();
        let at = (seed % bytes.len() as u64) as usize;
        bytes[at] ^= ((seed >> 40) as u8) | 1;
        std::fs::write(&path, &bytes).unwrap();
        if let Err(err) = read_tensors(&path) {
            one_line_message(&err, &path);
            failures += 1;
        }
    }
    // Most flips land in CRC-checked data or zip structures and must be caught.
    assert!(failures > 200, "only {failures} of 400 corruptions were detected");
}
