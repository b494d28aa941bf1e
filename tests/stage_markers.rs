//! The emulated profiler's stage markers (engine/src/stage.rs) and its qemu plugin
//! (tools/qemu-plugin/edgecap_profile.c, driven by scripts/arm-profile.sh):
//! - every marker is a distinct function in the `edgecap` binary's symbol table (not inlined,
//!   merged or stripped away), which is how the plugin finds them;
//! - the plugin, built with gcc and loaded by qemu-user, splits a real `edgecap caption` run into
//!   the stages in the order the engine passes them, with instructions and cache misses.
//!
//! The plugin run emulates this machine's own (x86_64) build with `qemu-x86_64`, so it runs
//! wherever scripts/test.sh installed qemu-user; `plugin_on_arm` does the same for the aarch64
//! release build (ignored: it needs the cross build, like tests/arm_emulation.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgecap_engine::stage::MARKER_SYMBOLS;
use edgecap_tests::{binary, fixtures, BOARDS};
use serde_json::Value;

/// Defined function symbols (name → address) of an ELF file's `.symtab` (32 or 64-bit,
/// little-endian), read without a library.
fn elf_functions(path: &Path) -> HashMap<String, u64> {
    let data = std::fs::read(path).unwrap();
    assert_eq!(&data[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(data[5], 1, "little-endian ELF expected");
    let is64 = data[4] == 2;
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as u64;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let word = |o: usize| if is64 { u64_at(o) } else { u32_at(o) };
    let (shoff, shentsize, shnum) = if is64 {
        (u64_at(0x28) as usize, u16_at(0x3a), u16_at(0x3c))
    } else {
        (u32_at(0x20) as usize, u16_at(0x2e), u16_at(0x30))
    };
    // Section header fields: type at 4; offset, size, link, entsize by class.
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        if is64 {
            (
                u32_at(h + 4),
                u64_at(h + 0x18) as usize,
                u64_at(h + 0x20) as usize,
                u32_at(h + 0x28) as usize,
                u64_at(h + 0x38) as usize,
            )
        } else {
            (
                u32_at(h + 4),
                u32_at(h + 0x10) as usize,
                u32_at(h + 0x14) as usize,
                u32_at(h + 0x18) as usize,
                u32_at(h + 0x24) as usize,
            )
        }
    };
    let mut out = HashMap::new();
    for i in 0..shnum {
        let (kind, off, size, link, entsize) = section(i);
        if kind != 2 {
            continue; // SHT_SYMTAB only: the table qemu reads
        }
        let (_, stroff, _, _, _) = section(link);
        for s in (off..off + size).step_by(entsize) {
            let (name, value, info, shndx) = if is64 {
                (u32_at(s) as usize, u64_at(s + 8), data[s + 4], u16_at(s + 6))
            } else {
                (u32_at(s) as usize, word(s + 4), data[s + 12], u16_at(s + 14))
            };
            if info & 0xf != 2 || shndx == 0 {
                continue; // STT_FUNC, defined
            }
            let start = stroff + name;
            let end = start + data[start..].iter().position(|&b| b == 0).unwrap();
            out.insert(String::from_utf8_lossy(&data[start..end]).into_owned(), value);
        }
    }
    out
}

fn check_markers(bin: &Path) {
    let functions = elf_functions(bin);
    let mut addresses: Vec<u64> = Vec::new();
    for name in MARKER_SYMBOLS {
        let addr = functions.get(*name).unwrap_or_else(|| panic!("{}: no function symbol {name}", bin.display()));
        addresses.push(*addr);
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), MARKER_SYMBOLS.len(), "{}: two markers share an address (merged)", bin.display());
}

#[test]
fn markers_are_distinct_functions_in_the_binary() {
    check_markers(&binary("edgecap"));
}

/// Builds the plugin with gcc into `dir`.
fn build_plugin(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/qemu-plugin/edgecap_profile.c");
    let lib = dir.join("edgecap_profile.so");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .expect("gcc (the plugin is C)");
    assert!(status.success(), "the plugin does not compile");
    lib
}

/// Runs `qemu ... edgecap caption --json IMG IMG` with the plugin and checks the profile.
fn profile(mut qemu: Command, edgecap_args: &[&str], dir: &Path) {
    let lib = build_plugin(dir);
    let out = dir.join("profile.json");
    let image = fixtures().join("images/astronaut.jpg");
    // `-plugin` and `-d` must come before the guest binary: `command` put `-cpu ... binary` last,
    // so the plugin's flags are passed through QEMU_* variables instead.
    qemu.env("QEMU_PLUGIN", format!("{},out={},llc=256", lib.display(), out.display()));
    qemu.env("QEMU_LOG", "plugin").env("QEMU_LOG_FILENAME", "/dev/null");
    qemu.arg("caption").args(edgecap_args).args(["--threads", "1", "--max-tokens", "3", "--json"]);
    qemu.arg(&image).arg(&image);
    let run = qemu.output().expect("qemu-user (scripts/test.sh installs it)");
    assert!(run.status.success(), "emulated caption failed: {}", String::from_utf8_lossy(&run.stderr));
    let captions = String::from_utf8_lossy(&run.stdout).lines().count();
    assert_eq!(captions, 2);

    let p: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let marks = p["markers"].as_array().unwrap();
    let stages: Vec<&str> = marks.iter().map(|m| m["stage"].as_str().unwrap()).collect();
    // Load, then per image: decode, preprocess, encoder, mapper, first token, a next_token marker
    // after each token, detokenize, end.
    let load = ["load", "load_decoder", "load_mapper", "load_rest", "loaded"];
    assert_eq!(&stages[..load.len()], &load[..], "{stages:?}");
    let mut rest = &stages[load.len()..];
    for _ in 0..2 {
        let head = ["image_decode", "preprocess", "encoder", "mapper", "first_token", "next_token"];
        assert_eq!(&rest[..head.len()], &head[..], "{stages:?}");
        rest = &rest[head.len()..];
        let more = rest.iter().take_while(|s| **s == "next_token").count();
        assert!(more <= 2, "at most 3 tokens: {stages:?}");
        assert_eq!(&rest[more..more + 2], &["detokenize", "caption_end"], "{stages:?}");
        rest = &rest[more + 2..];
    }
    assert!(rest.is_empty(), "{stages:?}");
    // Counters only grow; the encoder does real work; the cache saw the weights stream by.
    let insns: Vec<u64> = marks.iter().map(|m| m["insns"].as_u64().unwrap()).collect();
    assert!(insns.windows(2).all(|w| w[0] <= w[1]), "{insns:?}");
    let at = |name: &str| stages.iter().position(|s| *s == name).unwrap();
    assert!(insns[at("mapper")] - insns[at("encoder")] > 100_000, "{insns:?}");
    let totals = &p["totals"];
    assert!(totals["llc_misses"].as_u64().unwrap() > 1000, "{totals}");
    assert!(totals["load_bytes"].as_u64().unwrap() > totals["llc_misses"].as_u64().unwrap() * 64);
    // Per-stage profiles name the engine's functions.
    let encoder_top = p["stages"]["encoder"]["top"].as_array().unwrap();
    assert!(!encoder_top.is_empty() && encoder_top.iter().any(|s| !s["symbol"].as_str().unwrap().starts_with('@')));
}

#[test]
fn plugin_splits_an_emulated_run_into_stages() {
    let dir = tempfile::tempdir().unwrap();
    let mut qemu = Command::new("qemu-x86_64");
    qemu.arg(binary("edgecap"));
    // The built-in default model (no --bundle): small, so the emulated run takes seconds.
    profile(qemu, &[], dir.path());
}

#[test]
#[ignore = "needs the aarch64 release build (scripts/test.sh cross-builds it)"]
fn plugin_on_arm() {
    let board = BOARDS.iter().find(|b| b.cpu == "cortex-a76").unwrap();
    check_markers(&board.binary("edgecap"));
    let dir = tempfile::tempdir().unwrap();
    profile(board.command("edgecap"), &[], dir.path());
}
