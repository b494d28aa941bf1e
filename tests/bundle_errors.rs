//! Damaged bundles are refused at load with an error naming the file and the problem.

use std::path::{Path, PathBuf};

use edgecap_engine::bundle::sha256_file;
use edgecap_engine::model::CaptionModel;
use edgecap_tests::{binary, export_reference, fixtures, reference};

fn fresh_bundle(dir: &Path) -> PathBuf {
    export_reference(&reference("clipcap-mlp.json"), &fixtures(), &dir.join("bundle"))
}

fn load_error(bundle: &Path) -> String {
    match CaptionModel::load(bundle) {
        Ok(_) => panic!("{} loaded", bundle.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_manifest(bundle: &Path, edit: impl Fn(String) -> String) {
    let path = bundle.join("bundle.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
}

/// Rewrites the hash and size recorded for `file` to match its current contents.
fn rehash(bundle: &Path, file: &str) {
    let hash = sha256_file(&bundle.join(file)).unwrap();
    let size = std::fs::metadata(bundle.join(file)).unwrap().len();
    edit_manifest(bundle, |text| {
        let mut out = Vec::new();
        let mut in_entry = false;
        for line in text.lines() {
            if line.starts_with("path = ") {
                in_entry = line == format!("path = \"{file}\"");
            }
            if in_entry && line.starts_with("sha256 = ") {
                out.push(format!("sha256 = \"{hash}\""));
            } else if in_entry && line.starts_with("bytes = ") {
                out.push(format!("bytes = {size}"));
            } else {
                out.push(line.to_string());
            }
        }
        out.join("\n")
    });
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    std::fs::remove_file(bundle.join("mapper.onnx")).unwrap();
    let e = load_error(&bundle);
    assert!(e.contains("mapper.onnx") && e.contains("missing"), "{e}");
}

#[test]
fn wrong_hash_is_named() {
    // A flipped weight (the graph still parses) and a damaged header (it does not): files are
    // hashed while they are parsed, and the damage is what gets reported either way.
    for middle in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let bundle = fresh_bundle(dir.path());
        let path = bundle.join("decoder.onnx");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = if middle { bytes.len() / 2 } else { 0 };
        bytes[at] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        let e = load_error(&bundle);
        assert!(e.contains("decoder.onnx") && e.contains("sha256 mismatch"), "byte {at}: {e}");
    }
}

#[test]
fn wrong_tensor_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    let path = bundle.join("token_embeddings.npy");
    let (shape, data) = edgecap_engine::npy::read::<f32>(&path).unwrap();
    let cut = shape[1] - 1;
    let narrower: Vec<f32> = data.chunks(shape[1]).flat_map(|row| row[..cut].to_vec()).collect();
    edgecap_engine::npy::write(&path, &[shape[0], cut], &narrower).unwrap();
    rehash(&bundle, "token_embeddings.npy");
    let e = load_error(&bundle);
    assert!(e.contains("token_embeddings.npy") && e.contains("shape"), "{e}");

    // A graph whose width disagrees with the manifest is caught the same way.
    let bundle = fresh_bundle(&dir.path().join("second"));
    edit_manifest(&bundle, |t| t.replace("embed_dim = 32", "embed_dim = 48"));
    let e = load_error(&bundle);
    assert!(e.contains("image_encoder.onnx") && e.contains("shape"), "{e}");
}

#[test]
fn unknown_manifest_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    edit_manifest(&bundle, |t| t.replace("format_version = 1", "format_version = 99"));
    let e = load_error(&bundle);
    assert!(e.contains("bundle.toml") && e.contains("format_version 99"), "{e}");
}

#[test]
fn a_non_finite_token_table_stops_captioning_with_its_name() {
    // Hashes that match (a forged stamp does the same): only the values say the file is bad.
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    let path = bundle.join("token_embeddings.npy");
    let (shape, data) = edgecap_engine::npy::read::<f32>(&path).unwrap();
    edgecap_engine::npy::write(&path, &shape, &vec![f32::NAN; data.len()]).unwrap();
    rehash(&bundle, "token_embeddings.npy");
    let out = std::process::Command::new(binary("edgecap"))
        .args(["caption", "--max-tokens", "3", "--bundle"])
        .arg(&bundle)
        .arg(fixtures().join("images/astronaut.jpg"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "no caption from NaNs");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
    assert!(error.contains("token_embeddings.npy") && error.contains("non-finite value"), "{stderr}");
}

#[test]
fn a_non_finite_weight_is_refused_at_load_by_name() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    let path = bundle.join("mapper.onnx");
    let mut proto = tract_onnx::pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let weight = graph.initializer.iter_mut().find(|t| t.data_type == 1 && t.raw_data.len() >= 64).unwrap();
    weight.raw_data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let name = weight.name.clone();
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    rehash(&bundle, "mapper.onnx");
    let e = load_error(&bundle);
    assert!(e.contains("mapper.onnx") && e.contains(&format!("initializer {name} holds a non-finite value")), "{e}");
}

#[test]
fn versions_are_reported_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    for version in ["-1", "99999999999"] {
        edit_manifest(&bundle, |t| {
            let line = t.lines().find(|l| l.starts_with("format_version")).unwrap();
            t.replace(line, &format!("format_version = {version}"))
        });
        let e = load_error(&bundle);
        assert!(e.contains(&format!("format_version {version} is not supported")), "{e}");
    }
}

#[test]
fn manifest_errors_never_quote_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    let manifest = bundle.join("bundle.toml");
    // Zero bytes (a file truncated by a crash, then extended), and one 10 MB line.
    std::fs::write(&manifest, vec![0u8; 1839]).unwrap();
    let e = load_error(&bundle);
    assert!(e.contains("bundle.toml") && !e.contains('\0') && e.len() < 400, "{e:?}");
    let long = format!("format_version = 1\nname = \"{}\"\n", "x".repeat(10_000_000));
    std::fs::write(&manifest, long).unwrap();
    let e = load_error(&bundle);
    assert!(e.contains("bundle.toml: larger than 1024 KiB: not a bundle manifest"), "{}", &e[..e.len().min(300)]);
    let long = format!("format_version = 1\nname = \"{}\n", "x".repeat(500_000));
    std::fs::write(&manifest, long).unwrap();
    let e = load_error(&bundle);
    assert!(e.contains("bundle.toml") && e.contains("(line 2)") && e.len() < 400, "{}", &e[..e.len().min(300)]);
}

#[test]
fn malformed_manifests_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    let original = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    let variants = [
        String::new(),
        "format_version = 1".to_string(),
        original.replace("architecture = \"clipcap-mlp\"", "architecture = \"vqgan\""),
        original.replace("num_heads = 2", "num_heads = 0"),
        original.replace("path = \"mapper.onnx\"", "path = \"../../etc/passwd\""),
        original[..original.len() / 2].to_string(),
        "\u{0}\u{1}binary".to_string(),
    ];
    for v in &variants {
        assert_ne!(v, &original, "every variant must change the manifest");
        std::fs::write(bundle.join("bundle.toml"), v).unwrap();
        let e = load_error(&bundle);
        assert!(e.contains("bundle.toml"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    std::fs::remove_file(bundle.join("bundle.toml")).unwrap();
    let e = load_error(&bundle);
    assert!(e.contains("not a bundle directory"), "{e}");
}

#[test]
fn cli_exits_2_with_one_line_for_a_bad_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    std::fs::remove_file(bundle.join("vocab.json")).unwrap();
    let out = std::process::Command::new(binary("edgecap"))
        .args(["caption", "--bundle"])
        .arg(&bundle)
        .arg(fixtures().join("images/astronaut.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("vocab.json"), "{}", errors[0]);
}

#[test]
fn graphs_are_planned_for_the_shapes_the_engine_feeds() {
    use edgecap_engine::bundle::Bundle;
    use edgecap_engine::graph::{self, Axis, GraphShapes};
    use edgecap_engine::manifest::FileRole;

    let dir = tempfile::tempdir().unwrap();
    let bundle = Bundle::open(&fresh_bundle(dir.path())).unwrap();
    let (dims, size) = (&bundle.manifest.model, bundle.manifest.preprocess.image_size as usize);
    let path = bundle.path(FileRole::ImageEncoder);
    // The exported encoder has a symbolic batch; the engine binds it to the 1 image it feeds.
    let encoder = GraphShapes::for_role(FileRole::ImageEncoder, dims, size).unwrap();
    let plan = graph::load(&path, &encoder).unwrap();
    let out = plan.model().output_fact(0).unwrap().shape.as_concrete().map(|s| s.to_vec());
    assert_eq!(out, Some(vec![1, dims.embed_dim]));
    // The decoder's batch, sequence and cache length stay free.
    let shapes = GraphShapes::for_role(FileRole::Decoder, dims, size).unwrap();
    let plan = graph::load(&bundle.path(FileRole::Decoder), &shapes).unwrap();
    assert!(plan.model().output_fact(0).unwrap().shape.as_concrete().is_none());
    // A size the graph does not have is refused, naming the file and the input.
    let wrong = GraphShapes { inputs: vec![vec![Axis::Is(1), Axis::Is(4), Axis::Free, Axis::Free]], ..encoder };
    let err = graph::load(&path, &wrong).expect_err("a wrong channel count").to_string();
    assert!(err.contains("image_encoder.onnx") && err.contains("input 0"), "{err}");
}

/// Damages `path` in place: the same size, its modification time set back.
fn flip_middle_byte_keeping_mtime(path: &Path) {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options().write(true).open(path).unwrap().set_modified(modified).unwrap();
}

#[test]
fn a_verified_bundle_is_stamped_and_still_checked_after_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    let stamp = bundle.join(edgecap_engine::bundle::STAMP_FILE);
    // Export checks its bundle by loading it, which stamps it: start from none.
    let _ = std::fs::remove_file(&stamp);
    CaptionModel::load(&bundle).unwrap();
    let first = std::fs::read_to_string(&stamp).expect("a verified bundle is stamped");
    assert!(first.contains("decoder.onnx") && first.contains("bundle.toml"), "{first}");

    // Loaded again unchanged: the stamp stands. A damaged stamp only costs a new hashing.
    CaptionModel::load(&bundle).unwrap();
    std::fs::write(&stamp, "garbage").unwrap();
    CaptionModel::load(&bundle).unwrap();
    assert_eq!(std::fs::read_to_string(&stamp).unwrap(), first);

    // A byte flipped in place, size and modification time kept, and no stamp: the load hashes
    // every file, catches the damage and writes no stamp for a failed check. (With the stamp
    // left in place, the status-change time is what gives the damage away: the next test.)
    flip_middle_byte_keeping_mtime(&bundle.join("decoder.onnx"));
    std::fs::remove_file(&stamp).unwrap();
    let e = load_error(&bundle);
    assert!(e.contains("decoder.onnx") && e.contains("sha256 mismatch"), "{e}");
    assert!(!stamp.exists());
}

#[test]
fn a_stale_stamp_does_not_hide_damage() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fresh_bundle(dir.path());
    CaptionModel::load(&bundle).unwrap();
    let stamp = bundle.join(edgecap_engine::bundle::STAMP_FILE);
    let before = std::fs::read_to_string(&stamp).unwrap();
    // The same size and modification time, the stamp left as it was: only the file's
    // status-change time (ctime), which a write always moves, says the stamp is stale.
    flip_middle_byte_keeping_mtime(&bundle.join("mapper.onnx"));
    assert_eq!(std::fs::read_to_string(&stamp).unwrap(), before);
    let e = load_error(&bundle);
    assert!(e.contains("mapper.onnx") && e.contains("sha256 mismatch"), "{e}");
}
