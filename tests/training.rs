//! Training end to end: short runs of `host-tools train` / `distill` on the fixtures, whose loss
//! must fall, whose output must export into a bundle that `edgecap` captions with, and which
//! must be reproducible from their seed and resumable from their checkpoints.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgecap_tests::{binary, cosine, fixtures, gpt2_tokenizer_dir};
use serde_json::Value;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run binary");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn host_tools<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(binary("host-tools"));
    cmd.args(args);
    cmd
}

/// Runs a trainer with `--json` and returns its report.
fn train<S: AsRef<OsStr>>(args: &[S]) -> Value {
    let out = run(host_tools(args).arg("--json"));
    serde_json::from_slice(&out.stdout).expect("JSON report on stdout")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn assert_loss_fell(report: &Value, factor: f64) {
    let (first, last) = (report["run"]["first_loss"].as_f64().unwrap(), report["run"]["last_loss"].as_f64().unwrap());
    assert!(last < first * factor, "loss did not fall enough: {first} → {last} (wanted < ×{factor})");
}

/// Captions `images` with `bundle`; every line must be `path: text` with some text.
fn captions(bundle: &Path, images: &[PathBuf]) -> Vec<String> {
    let out = run(Command::new(binary("edgecap")).arg("caption").arg("--bundle").arg(bundle).args(images));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), images.len(), "one caption per image: {text}");
    for line in &lines {
        let (_, caption) = line.split_once(": ").expect("path: caption");
        assert!(!caption.trim().is_empty(), "empty caption: {line}");
    }
    lines
}

fn photos() -> Vec<PathBuf> {
    ["astronaut.jpg", "chelsea.png"].iter().map(|n| fixtures().join("images").join(n)).collect()
}

/// `host-tools train decap` on the fixture CLIP (real CLIP vocabulary) and caption corpus.
fn decap_args(out: &Path, steps: u32, seed: u64) -> Vec<String> {
    let f = fixtures();
    let mut args: Vec<String> = ["train", "decap", "--clip"].map(String::from).to_vec();
    args.push(p(&f.join("decap/clip-tiny")).to_string());
    args.extend(["--tokenizer".into(), p(&f.join("clip-tokenizer/bpe_simple_vocab_16e6.txt.gz")).to_string()]);
    args.extend(["--captions".into(), p(&f.join("decap/captions.txt")).to_string()]);
    let sizes = "--layers 2 --hidden 32 --heads 4 --batch 16 --lr 3e-3 --warmup 5 --checkpoint-every 3";
    args.extend(sizes.split(' ').map(String::from));
    args.extend(["--steps".into(), steps.to_string(), "--seed".into(), seed.to_string(), "--out".into()]);
    args.push(p(out).to_string());
    args
}

#[test]
fn decap_training_loss_falls_and_its_checkpoint_exports_and_captions() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let report = train(&decap_args(&run_dir, 40, 1));
    assert_eq!(report["captions"], 243);
    assert_loss_fell(&report, 0.6);

    let bundle = dir.path().join("bundle");
    run(host_tools(&["export", "--clip", p(&fixtures().join("decap/clip-tiny"))])
        .args(["--tokenizer", p(&fixtures().join("clip-tokenizer/bpe_simple_vocab_16e6.txt.gz"))])
        .args(["--decap", p(&run_dir.join("decap.safetensors")), "--decoder-heads", "4"])
        .args(["--memory-captions", p(&fixtures().join("decap/captions.txt")), "--out", p(&bundle)]));
    captions(&bundle, &photos());
}

#[test]
fn decap_training_is_reproducible_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    train(&decap_args(&a, 8, 5));
    train(&decap_args(&b, 8, 5));
    let weights = |d: &Path| std::fs::read(d.join("decap.safetensors")).unwrap();
    assert_eq!(weights(&a), weights(&b), "same seed, same weights");

    // Stop after 4 steps, then resume to 8: the same weights as the uninterrupted run.
    train(&decap_args(&c, 4, 5));
    assert_ne!(weights(&a), weights(&c));
    let mut resumed = decap_args(&c, 8, 5);
    resumed.push("--resume".into());
    let report = train(&resumed);
    assert_eq!(report["run"]["resumed_from"], 4);
    assert_eq!(weights(&a), weights(&c), "a resumed run continues exactly");

    let other_seed = dir.path().join("d");
    train(&decap_args(&other_seed, 8, 6));
    assert_ne!(weights(&a), weights(&other_seed), "the seed matters");

    // Refusals: a second run into a used directory, a resume with other settings.
    let again = host_tools(&decap_args(&a, 8, 5)).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"), "{}", String::from_utf8_lossy(&again.stderr));
    let mut changed = decap_args(&a, 12, 7);
    changed.push("--resume".into());
    let refused = host_tools(&changed).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("other settings"));
}

/// image<TAB>caption lines over the fixture photographs, with one missing image and one caption
/// outside the tiny GPT-2's 1024-id vocabulary (both must be skipped and counted).
fn clipcap_data(dir: &Path) -> PathBuf {
    let images = fixtures().join("images");
    let lines = [
        ("astronaut.jpg", "A man in a new game"),
        ("chelsea.png", "A good one with her hand"),
        ("rocket.bmp", "A long one that will take off"),
        ("coins16.png", "A set of two"),
        ("camera_gray.png", "A man with his own"),
        ("coffee.webp", "A good cup of coffee"),
        ("missing.png", "A man"),
    ];
    let text: String = lines.iter().map(|(i, c)| format!("{}\t{c}\n", images.join(i).display())).collect();
    let path = dir.join("data.tsv");
    std::fs::write(&path, text).unwrap();
    path
}

fn export_clipcap(dir: &Path, weights: &Path, lm: &Path) -> PathBuf {
    let bundle = dir.join(format!("bundle-{}", weights.parent().unwrap().file_name().unwrap().to_string_lossy()));
    run(host_tools(&["export", "--clip", p(&fixtures().join("models/clip-tiny"))]).args([
        "--clipcap",
        p(weights),
        "--lm",
        p(lm),
        "--tokenizer",
        p(&gpt2_tokenizer_dir()),
        "--out",
        p(&bundle),
    ]));
    bundle
}

#[test]
fn clipcap_training_both_mappers_export_and_caption() {
    let dir = tempfile::tempdir().unwrap();
    let data = clipcap_data(dir.path());
    let lm = fixtures().join("models/gpt2-tiny");
    let common = |out: &Path, extra: &str| -> Vec<String> {
        let mut v: Vec<String> = ["train", "clipcap", "--clip"].map(String::from).to_vec();
        v.push(p(&fixtures().join("models/clip-tiny")).to_string());
        for (flag, path) in
            [("--lm", &lm), ("--tokenizer", &gpt2_tokenizer_dir()), ("--data", &data), ("--out", &out.to_path_buf())]
        {
            v.extend([flag.to_string(), p(path).to_string()]);
        }
        let sizes = format!("--prefix-length 4 --batch 4 --warmup 2 --steps 30 {extra}");
        v.extend(sizes.split(' ').map(String::from));
        v
    };
    let mlp_dir = dir.path().join("mlp");
    let mlp = train(&common(&mlp_dir, "--lr 1e-2"));
    assert_eq!((mlp["pairs"].as_u64(), mlp["skipped_images"].as_u64()), (Some(5), Some(1)), "{mlp}");
    assert_eq!(mlp["skipped_captions"], 1, "the coffee caption has ids beyond 1024");
    assert_loss_fell(&mlp, 0.99);

    let tr_dir = dir.path().join("transformer");
    let tuned = train(&common(&tr_dir, "--lr 3e-3 --mapper transformer --mapper-layers 2 --tune-lm"));
    assert_loss_fell(&tuned, 0.5);

    for weights in [mlp_dir.join("clipcap.safetensors"), tr_dir.join("clipcap.safetensors")] {
        captions(&export_clipcap(dir.path(), &weights, &lm), &photos());
    }
    // The tuned run speaks its captions' language after 30 steps: the astronaut's caption opens
    // as its training caption does ("A man ...") and every word of it is one of the training
    // captions' words (the random-weight tiny GPT-2 alone strings arbitrary tokens together).
    // Measured: "A man with with.", not yet word for word.
    let bundle = dir.path().join("bundle-transformer");
    let astronaut = captions(&bundle, &photos()[..1]).remove(0);
    let (_, text) = astronaut.split_once(": ").unwrap();
    let known: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .flat_map(|l| l.split('\t').nth(1).unwrap_or_default().split(' ').map(str::to_lowercase).collect::<Vec<_>>())
        .collect();
    assert!(text.starts_with("A man"), "{astronaut}");
    for word in text.trim_end_matches('.').split_whitespace() {
        assert!(known.contains(&word.to_lowercase()), "{word:?} of {astronaut:?} is in no training caption");
    }
}

#[test]
fn distilled_student_is_a_gpt2_directory_clipcap_trains_on() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("captions.txt");
    let lines =
        ["A man in a new suit", "the people that will see the world", "A man with his new work", "A set of two"];
    std::fs::write(&corpus, lines.repeat(5).join("\n")).unwrap();
    let student = dir.path().join("student");
    let teacher = fixtures().join("models/gpt2-tiny");
    let report = train(&[
        "distill",
        "--teacher",
        p(&teacher),
        "--tokenizer",
        p(&gpt2_tokenizer_dir()),
        "--layers",
        "1",
        "--data",
        p(&corpus),
        "--batch",
        "4",
        "--lr",
        "3e-3",
        "--warmup",
        "2",
        "--steps",
        "20",
        "--out",
        p(&student),
    ]);
    assert_loss_fell(&report, 0.9);
    assert_eq!(report["student"]["layers"], 1);
    assert_eq!(report["teacher"]["layers"], 2);
    // How often the student's next-token choice is the teacher's: 0.75 measured after 20 steps,
    // the floor two thirds of it.
    let agreement = report["top1_agreement"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&agreement), "{report}");
    let config: Value = serde_json::from_slice(&std::fs::read(student.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["n_layer"], 1);

    let data = clipcap_data(dir.path());
    let run_dir = dir.path().join("on-student");
    train(&[
        "train",
        "clipcap",
        "--clip",
        p(&fixtures().join("models/clip-tiny")),
        "--lm",
        p(&student),
        "--data",
        p(&data),
        "--prefix-length",
        "4",
        "--batch",
        "4",
        "--lr",
        "1e-2",
        "--steps",
        "5",
        "--out",
        p(&run_dir),
    ]);
    let bundle = export_clipcap(dir.path(), &run_dir.join("clipcap.safetensors"), &student);
    let manifest = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    assert!(manifest.contains("num_layers = 1"), "{manifest}");
    captions(&bundle, &photos());
}

#[test]
fn trainers_refuse_bad_data_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let mut args = decap_args(&dir.path().join("run"), 2, 0);
    let at = args.iter().position(|a| a == "--captions").unwrap();
    args[at + 1] = p(&empty).to_string();
    let out = host_tools(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("empty.txt") && last.contains("no captions"), "{err}");
}

/// Cosine of the text embeddings `clip` gives two captions (through `host-tools memory build`).
fn caption_cosine(clip: &Path, a: &str, b: &str, dir: &Path) -> f64 {
    let captions = dir.join("pair.txt");
    std::fs::write(&captions, format!("{a}\n{b}\n")).unwrap();
    let memory = dir.join("pair.safetensors");
    run(&mut host_tools(&["memory", "build", "--clip", p(clip), "--captions", p(&captions), "--out", p(&memory)]));
    let m = edgecap_engine::memory::SupportMemory::read(&memory).unwrap();
    cosine(&m.row(0), &m.row(1))
}

#[test]
fn clip_training_learns_and_its_towers_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let scenes = dir.path().join("scenes");
    run(&mut host_tools(&["scenes", "generate", "--count", "96", "--seed", "4", "--out", p(&scenes)]));
    let out = dir.path().join("clip");
    #[rustfmt::skip]
    let report = train(&[
        "train", "clip", "--data", p(&scenes.join("captions.tsv")), "--image-size", "32",
        "--patch-size", "16", "--vision-width", "32", "--vision-layers", "1", "--text-width", "32",
        "--text-layers", "1", "--heads", "2", "--projection-dim", "16", "--batch", "32", "--steps",
        "150", "--lr", "3e-3", "--hard-negatives", "--text-contrast", "1", "--seed", "1", "--out", p(&out),
    ]);
    assert_loss_fell(&report, 0.9);
    assert_eq!(report["pairs"], 96);
    // Image -> caption retrieval among the 96 pairs: 9 of 96 reached (0.094), chance 1 in 96.
    assert!(report["retrieval_top1"].as_f64().unwrap() >= 0.07, "{report}");
    // The directory is an HF CLIP one: the memory builder reads its text tower and vocabulary,
    // and captions one word apart do not embed alike.
    let cosine =
        caption_cosine(&out, "two large red circles on the left", "two large red circles on the right", dir.path());
    assert!(cosine < 0.99, "left/right captions at cosine {cosine}");
}
