//! The device build on ARM, run under qemu-user on three CPU models: Cortex-A72 (Raspberry Pi 4,
//! no dot product), Cortex-A76 (Pi 5, SDOT int8 kernels) and Cortex-A7 (armv7, 32-bit OS).
//! fp32 captions must be token-for-token those of the x86 build on real photographs; int8 ones
//! must pass `host-tools validate`'s default thresholds run on the board itself.
//!
//! Ignored by a plain `cargo test`: they need the cross-built release binaries. scripts/test.sh
//! cross-builds them and runs these with `--ignored`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use edgecap_tests::{binary, export_reference, fixtures, reference, BOARDS};
use serde_json::Value;

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(out.status.success(), "{what}: exit {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    out
}

/// Real photographs in every format the fixtures have (JPEG with EXIF rotation, PNG, WebP, ...).
fn photographs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(fixtures().join("images")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// The tiny fixture bundles (MLP and transformer mappers), exported once, plus an int8 copy.
struct Bundles {
    _dir: tempfile::TempDir,
    fp32: Vec<PathBuf>,
    int8: PathBuf,
}

fn bundles() -> &'static Bundles {
    static B: OnceLock<Bundles> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let fp32: Vec<PathBuf> = ["clipcap-mlp", "clipcap-transformer"]
            .iter()
            .map(|name| export_reference(&reference(&format!("{name}.json")), &fixtures(), &dir.path().join(name)))
            .collect();
        let int8 = dir.path().join("clipcap-mlp-int8");
        let mut quantize = Command::new(binary("host-tools"));
        // Every graph int8 even where x86 measured it slower: the ARM kernels are what is tested.
        quantize.arg("quantize").arg(&fp32[0]).arg("--out").arg(&int8).arg("--all-int8");
        quantize.arg("--calibration").arg(fixtures().join("images"));
        run(quantize, "host-tools quantize");
        Bundles { _dir: dir, fp32, int8 }
    })
}

/// `edgecap caption --json` → token ids per image, in argument order.
fn caption_tokens(mut cmd: Command, bundle: &Path, beam: usize, what: &str) -> Vec<Vec<u64>> {
    cmd.arg("caption").arg("--json").arg("--bundle").arg(bundle).args(["--beam", &beam.to_string()]);
    cmd.args(photographs());
    let out = run(cmd, what);
    let text = String::from_utf8_lossy(&out.stdout);
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), photographs().len(), "{what}: one record per photograph: {text}");
    records
        .iter()
        .map(|r| {
            let tokens = r["tokens"].as_array().unwrap_or_else(|| panic!("{what}: no tokens in {r}"));
            tokens.iter().map(|t| t.as_u64().unwrap()).collect()
        })
        .collect()
}

#[test]
#[ignore = "needs the cross-built binaries; scripts/test.sh runs it"]
fn each_board_gets_the_kernels_its_cpu_has() {
    for board in &BOARDS {
        let mut cmd = board.command("edgecap");
        cmd.arg("info");
        let out = run(cmd, board.name);
        let text = String::from_utf8_lossy(&out.stdout);
        let cpu = text.lines().find(|l| l.starts_with("cpu ")).unwrap_or_else(|| panic!("{}: {text}", board.name));
        eprintln!("{} ({}): {cpu}", board.name, board.cpu);
        assert_eq!(cpu.contains("dotprod"), board.dotprod, "{}: {cpu}", board.name);
        let arch = if board.triple.starts_with("aarch64") { "cpu aarch64:" } else { "cpu arm: neon" };
        assert!(cpu.starts_with(arch), "{}: {cpu}", board.name);
        // edgecap's own int8 kernel for the core: SDOT where it has it, the widening multiply
        // on the Pi 4's Cortex-A72, 32-bit NEON on armv7.
        let kernel = match (board.triple.starts_with("aarch64"), board.dotprod) {
            (true, true) => "neon-dot",
            (true, false) => "neon-wide",
            (false, _) => "armv7-neon",
        };
        assert!(text.lines().any(|l| l == format!("int8 kernel {kernel}")), "{}: {text}", board.name);
    }
}

#[test]
#[ignore = "needs the cross-built binaries; scripts/test.sh runs it"]
fn fp32_captions_on_each_board_are_the_x86_tokens() {
    for bundle in &bundles().fp32 {
        for beam in [1, 3] {
            let x86 = caption_tokens(Command::new(binary("edgecap")), bundle, beam, "x86");
            for board in &BOARDS {
                let what = format!("{} ({}), {}, beam {beam}", board.name, board.cpu, bundle.display());
                let arm = caption_tokens(board.command("edgecap"), bundle, beam, &what);
                for ((image, want), got) in photographs().iter().zip(&x86).zip(&arm) {
                    assert_eq!(got, want, "{what}: {}", image.display());
                }
            }
        }
    }
}

#[test]
#[ignore = "needs the cross-built binaries; scripts/test.sh runs it"]
fn int8_passes_validate_on_each_board() {
    let b = bundles();
    let x86 = caption_tokens(Command::new(binary("edgecap")), &b.int8, 1, "x86 int8");
    for board in &BOARDS {
        let what = format!("{} ({})", board.name, board.cpu);
        let mut validate = board.command("host-tools");
        validate.arg("validate").arg(&b.fp32[0]).arg(&b.int8).arg("--images").arg(fixtures().join("images"));
        let out = validate.arg("--json").output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: validate JSON: {e}\n{}", String::from_utf8_lossy(&out.stderr)));
        let checks = &report["checks"];
        eprintln!("{what}: validate pass={} checks={checks}", report["pass"]);
        assert_eq!(out.status.code(), Some(0), "{what}: validate failed: {checks}");
        assert_eq!(report["pass"], true, "{what}: {checks}");

        // Integer products are exact on every kernel and the requantization is the same IEEE
        // arithmetic, so where the float operators between the products round as on x86 (both
        // use fused multiply-adds) the board's int8 captions are the x86 ones. armv7's float
        // kernels (tract's NEONv1 GEMM, VMLA) round differently in the last bit, and quantizing
        // an activation turns that into a flip of one step now and then: there the check is
        // that edgecap's NEON kernel gives exactly the captions of the portable integer kernel
        // on the same board, and validate's thresholds above.
        let arm = caption_tokens(board.command("edgecap"), &b.int8, 1, &what);
        let (reference, against) = if board.triple.starts_with("aarch64") {
            (x86.clone(), "x86")
        } else {
            let mut portable = board.command("edgecap");
            portable.env("EDGECAP_INT8_KERNEL", "portable");
            (caption_tokens(portable, &b.int8, 1, &format!("{what}, portable kernel")), "the portable kernel")
        };
        for ((image, want), got) in photographs().iter().zip(&reference).zip(&arm) {
            assert_eq!(got, want, "{what}: int8 tokens of {} against {against}", image.display());
        }
    }
}
