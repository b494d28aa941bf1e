//! Embeds the default model (`models/default`, the project's own trained int8 bundle) into the
//! binary: writes `$OUT_DIR/builtin_model.rs` with every file of the bundle as `include_bytes!`
//! and an id that changes whenever any byte does. Without a `models/default` the list is empty
//! and the binary simply has no built-in model.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64; // FNV-1a over names and contents
    let mut list = String::from("&[\n");
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name in models/default");
        // Not the bundle's: its notes, and the stamp of a check made on this machine.
        if name == "README.md" || name == ".verified" {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(path).expect("read models/default");
        for b in name.bytes().chain(bytes) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        writeln!(list, "    ({name:?}, include_bytes!({:?}) as &[u8]),", path.display().to_string()).unwrap();
    }
    list.push(']');
    let code = format!(
        "/// The bundle's files (name, bytes).\npub const FILES: &[(&str, &[u8])] = {list};\n/// Changes with any byte of them.\npub const ID: &str = \"{hash:016x}\";\n"
    );
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("builtin_model.rs");
    std::fs::write(out, code).expect("write builtin_model.rs");
}
