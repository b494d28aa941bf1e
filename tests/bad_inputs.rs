//! Bad images and bad checkpoints through the real binaries: each gets one clear line naming
//! the input, a batch goes on past it, and the exit code says something failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgecap_tests::{binary, export_reference, fixtures, reference};

fn tiny_bundle(dir: &Path) -> PathBuf {
    export_reference(&reference("clipcap-mlp.json"), &fixtures(), &dir.join("bundle"))
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.env("RUST_LOG", "off").output().expect("run binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn caption_batch_reports_each_bad_image_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(dir.path());
    let bad = fixtures().join("bad");
    let cases = [
        ("empty.jpg", "empty"),
        ("truncated.jpg", "truncated"),
        ("not_an_image.jpg", "not an image"),
        ("one_pixel.png", "1×1"),
        ("huge_header.png", "exceed"),
    ];
    let good = fixtures().join("images/astronaut.jpg");
    let missing = dir.path().join("no-such-photo.jpg");
    let mut cmd = Command::new(binary("edgecap"));
    cmd.arg("caption").arg("--bundle").arg(&bundle).arg("--max-tokens").arg("5");
    for (file, _) in &cases {
        cmd.arg(bad.join(file));
    }
    cmd.arg(&missing).arg(&good);
    let (out, stdout, stderr) = run(&mut cmd);

    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the good image is captioned: {stdout}");
    assert!(lines[0].starts_with(&format!("{}: ", good.display())), "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), cases.len() + 1, "one line per bad input: {stderr}");
    for ((file, problem), line) in cases.iter().zip(&errors) {
        assert!(line.contains(file), "{line} names {file}");
        assert!(line.to_lowercase().contains(problem), "{line} says {problem}");
    }
    assert!(errors[cases.len()].contains("no-such-photo.jpg"), "{stderr}");
    assert!(stderr.contains("6 of 7 images failed"), "{stderr}");
}

#[test]
fn caption_json_lines_carry_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(dir.path());
    let good = fixtures().join("images/chelsea.png");
    let bad = fixtures().join("bad/empty.jpg");
    let (out, stdout, _) = run(Command::new(binary("edgecap"))
        .args(["caption", "--json", "--beam", "3", "--bundle"])
        .arg(&bundle)
        .arg(&good)
        .arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    let records: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["image"], good.display().to_string());
    assert!(records[0]["caption"].is_string());
    assert!(!records[0]["tokens"].as_array().unwrap().is_empty());
    assert!(records[0]["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(records[1]["image"], bad.display().to_string());
    assert!(records[1]["error"].as_str().unwrap().contains("empty.jpg"));
}

#[test]
fn export_refuses_checkpoints_with_missing_or_unexpected_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("clipcap-missing-key.pt", "clip_project.model.2.bias"),
        ("clipcap-unexpected-key.pt", "clip_project.model.5.weight"),
    ];
    for (file, key) in cases {
        let ckpt = fixtures().join("bad").join(file);
        let out_dir = dir.path().join(file);
        let (out, _, stderr) = run(Command::new(binary("host-tools"))
            .arg("export")
            .arg("--clip")
            .arg(fixtures().join("models/clip-tiny"))
            .arg("--clipcap")
            .arg(&ckpt)
            .arg("--tokenizer")
            .arg(fixtures().join("gpt2-tokenizer"))
            .arg("--out")
            .arg(&out_dir));
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(file) && errors[0].contains(key), "{}", errors[0]);
        assert!(!out_dir.join("bundle.toml").exists(), "no manifest for a failed export");
    }
}

#[test]
fn export_refuses_a_file_that_is_not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _, stderr) = run(Command::new(binary("host-tools"))
        .arg("export")
        .arg("--clip")
        .arg(fixtures().join("models/clip-tiny"))
        .arg("--clipcap")
        .arg(fixtures().join("bad/not_an_image.jpg"))
        .arg("--tokenizer")
        .arg(fixtures().join("gpt2-tokenizer"))
        .arg("--out")
        .arg(dir.path().join("b")));
    assert_eq!(out.status.code(), Some(2));
    let line = stderr.lines().find(|l| l.starts_with("error: ")).expect("an error line");
    assert!(line.contains("not_an_image.jpg"), "{line}");
}

#[test]
fn caption_without_bundle_uses_the_default_model() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(dir.path());
    let image = fixtures().join("images/coffee.webp");
    // From an unrelated working directory, the bundle named by EDGECAP_BUNDLE.
    let (out, stdout, stderr) = run(Command::new(binary("edgecap"))
        .current_dir(dir.path())
        .env("EDGECAP_BUNDLE", &bundle)
        .arg("caption")
        .arg(&image));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with(&format!("{}: ", image.display())), "{stdout}");
    // ./models/default in the working directory is not looked at: the folder one runs in does
    // not choose the model.
    let elsewhere = tempfile::tempdir().unwrap();
    let (_, default, _) = run(Command::new(binary("edgecap")).current_dir(elsewhere.path()).arg("caption").arg(&image));
    assert_ne!(default, stdout, "the tiny bundle and the default model caption differently");
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::rename(&bundle, dir.path().join("models/default")).unwrap();
    let (out, here, stderr) = run(Command::new(binary("edgecap")).current_dir(dir.path()).arg("caption").arg(&image));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(here, default, "the working directory's models/default was used");
    // A named bundle that is not there is an error naming it, not a silent fallback.
    let (out, _, stderr) = run(Command::new(binary("edgecap"))
        .current_dir(dir.path())
        .env("EDGECAP_BUNDLE", dir.path().join("gone"))
        .arg("caption")
        .arg(&image));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("gone"), "{stderr}");
}

#[test]
fn caption_threads_change_nothing_but_speed() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(dir.path());
    let images = ["images/chelsea.png", "images/astronaut.jpg", "images/rocket.bmp"].map(|i| fixtures().join(i));
    let caption = |threads: &str| {
        let (out, stdout, stderr) = run(Command::new(binary("edgecap"))
            .args(["caption", "--threads", threads, "--bundle"])
            .arg(&bundle)
            .args(&images));
        assert_eq!(out.status.code(), Some(0), "--threads {threads}: {stderr}");
        stdout
    };
    // tract's multithreaded products split the work by tiles, not by reductions: same bits.
    assert_eq!(caption("1"), caption("3"));
    let (out, _, stderr) = run(Command::new(binary("edgecap"))
        .args(["caption", "--threads", "0", "--bundle"])
        .arg(&bundle)
        .arg(&images[0]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.trim().lines().count() == 1 && stderr.contains("threads"), "{stderr}");
}
