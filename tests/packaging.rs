//! The Debian packages (scripts/package-deb.sh): unpacked with dpkg into an empty arm64 / armhf
//! root, they put the binary, the systemd unit, the configuration and the default model in
//! place, and the installed binary captions photographs under qemu with nothing but what the
//! package holds. Ignored by a plain `cargo test` (needs the packages); scripts/test.sh runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgecap_tests::{fixtures, Board, BOARDS};

fn debian_arch(board: &Board) -> &'static str {
    if board.triple.starts_with("aarch64") {
        "arm64"
    } else {
        "armhf"
    }
}

fn package(board: &Board) -> PathBuf {
    // cargo-deb writes every architecture's package to target/debian.
    let dir = board.binary("edgecap").ancestors().nth(3).unwrap().join("debian");
    let suffix = format!("_{}.deb", debian_arch(board));
    let found = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/package-deb.sh)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().ends_with(&suffix))
        .max();
    found.unwrap_or_else(|| panic!("no edgecap*{suffix} in {}", dir.display()))
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The newest `GLIBC_2.N` symbol version an ELF file asks for, as (2, N).
fn newest_glibc(binary: &Path) -> (u32, u32) {
    let bytes = std::fs::read(binary).unwrap();
    let needle = b"GLIBC_2.";
    let mut newest = (2, 0);
    for i in 0..bytes.len().saturating_sub(needle.len()) {
        if &bytes[i..i + needle.len()] == needle {
            let digits: String =
                bytes[i + needle.len()..].iter().take_while(|b| b.is_ascii_digit()).map(|&b| b as char).collect();
            if let Ok(minor) = digits.parse::<u32>() {
                newest = newest.max((2, minor));
            }
        }
    }
    newest
}

/// `libc6 (>= 2.N)` in a Depends field, as (2, N).
fn declared_glibc(depends: &str) -> (u32, u32) {
    let rest = depends.split("libc6 (>= 2.").nth(1).unwrap_or_else(|| panic!("no libc6 dependency: {depends}"));
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    (2, minor.parse().unwrap())
}

#[test]
#[ignore = "needs the .deb packages; scripts/test.sh builds them and runs it"]
fn packages_install_into_an_empty_root_and_caption_from_there() {
    // One package per architecture; the two aarch64 boards share one.
    for board in BOARDS.iter().filter(|b| b.cpu != "cortex-a76") {
        let deb = package(board);
        let field = |name: &str| stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name)).trim().to_string();
        assert_eq!(field("Package"), "edgecap");
        assert_eq!(field("Architecture"), debian_arch(board), "{}", deb.display());
        let depends = field("Depends");
        let needed = newest_glibc(&board.binary("edgecap"));
        assert!(
            declared_glibc(&depends) >= needed,
            "{}: Depends {depends} but the binary needs glibc {needed:?}",
            deb.display()
        );

        // dpkg into an empty root: its own database, no chroot (maintainer scripts need the board).
        let root = tempfile::tempdir().unwrap();
        let admin = root.path().join("var/lib/dpkg");
        std::fs::create_dir_all(admin.join("info")).unwrap();
        std::fs::create_dir_all(admin.join("updates")).unwrap();
        std::fs::write(admin.join("status"), "").unwrap();
        stdout(
            Command::new("dpkg")
                .arg(format!("--root={}", root.path().display()))
                .args(["--force-architecture", "--force-depends", "--force-not-root", "--unpack"])
                .arg(&deb),
        );
        let r = |p: &str| root.path().join(p);
        let status = stdout(Command::new("dpkg-query").arg(format!("--admindir={}", admin.display())).args([
            "-W",
            "-f=${Status} ${Conffiles}",
            "edgecap",
        ]));
        assert!(status.contains("unpacked") && status.contains("/etc/edgecap/edgecap.toml"), "{status}");

        let unit = ["lib/systemd/system/edgecap.service", "usr/lib/systemd/system/edgecap.service"]
            .iter()
            .map(|p| r(p))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("no systemd unit in {}", deb.display()));
        let unit = std::fs::read_to_string(unit).unwrap();
        for line in [
            "User=edgecap",
            "SupplementaryGroups=video dialout",
            "ExecStart=/usr/bin/edgecap run --config /etc/edgecap/edgecap.toml",
        ] {
            assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}");
        }
        let postinst = admin.join("info/edgecap.postinst");
        let script = std::fs::read_to_string(&postinst).unwrap();
        assert!(
            script.contains("useradd --system") && script.contains("systemctl")
                || script.contains("deb-systemd-helper"),
            "{script}"
        );
        stdout(Command::new("sh").arg("-n").arg(&postinst));

        // The installed binary finds the packaged model (<prefix>/share/edgecap/default) by itself.
        let installed = r("usr/bin/edgecap");
        assert!(r("usr/share/edgecap/default/bundle.toml").is_file());
        let mut caption = Command::new(board.qemu);
        caption.args(["-cpu", board.cpu, "-L", board.sysroot]).arg(&installed).env("TRACT_CPU_ARM32_NEON", "true");
        caption.arg("caption").arg("--json").arg(fixtures().join("images/astronaut.jpg"));
        let record: serde_json::Value = serde_json::from_str(stdout(&mut caption).trim()).unwrap();
        assert!(!record["tokens"].as_array().unwrap().is_empty(), "{record}");

        // And the packaged configuration checks (its camera source aside, which needs a board).
        // Unpacked but not configured, dpkg leaves a conffile as .dpkg-new (renamed on configure).
        let config = std::fs::read_to_string(r("etc/edgecap/edgecap.toml.dpkg-new")).unwrap();
        let test_config = root.path().join("test.toml");
        std::fs::write(&test_config, config.replace("source = \"camera:0\"", "source = \"test-pattern\"")).unwrap();
        let mut check = Command::new(board.qemu);
        check.args(["-cpu", board.cpu, "-L", board.sysroot]).arg(&installed).env("TRACT_CPU_ARM32_NEON", "true");
        check.arg("check-config").arg("--config").arg(&test_config);
        stdout(&mut check);
    }
}
