//! Mutation tests: thousands of damaged inputs, made from real ones by a seeded generator,
//! through the public entry points that read user data (images, bundle manifests, `.npy`
//! tables, support memories and checkpoints in safetensors, torch checkpoints' pickles). Each
//! must come back as a value or as an error of one line naming the input: never a panic, never
//! a hang (every entry point bounds what it reads and allocates). A failure prints the seed and
//! the case's number, which reproduce it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use edgecap_engine::image_load::decode_rgb;
use edgecap_engine::memory::{MemoryValues, SupportMemory};
use edgecap_engine::npy;
use edgecap_tests::fixtures;
use host_tools::checkpoint::read_tensors;

const SEED: u64 = 0x5EED_ED6E_CA90_0001;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One damage to `bytes`, chosen at random, confined to `bytes[..focus]` where the parser's
/// decisions are (headers), then a second one half the time.
fn mutate(rng: &mut Rng, bytes: &[u8], focus: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(2) {
        let span = focus.min(out.len()).max(1);
        let at = rng.below(span);
        match rng.below(6) {
            0 => out.truncate(at),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(span.min(out.len()));
                    if let Some(b) = out.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            2 => {
                let value = [0x00, 0xFF, 0x7F, 0x80][rng.below(4)];
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.get_mut(at..end).into_iter().flatten().for_each(|b| *b = value);
            }
            3 => {
                let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                let at = at.min(out.len());
                out.splice(at..at, extra);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                if at < end {
                    out.drain(at..end);
                }
            }
            _ => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                let chunk = out.get(at..end).unwrap_or_default().to_vec();
                let at = at.min(out.len());
                out.splice(at..at, chunk);
            }
        }
    }
    out
}

/// Runs `check` on `count` mutations of each sample; collects the panics and the errors that
/// are not one line naming the input.
fn campaign(
    what: &str,
    samples: &[(String, Vec<u8>, usize)],
    count: usize,
    check: impl Fn(&str, &[u8]) -> Option<String>,
) {
    let mut rng = Rng(SEED ^ what.len() as u64);
    let mut failures = Vec::new();
    let mut refused = 0;
    for case in 0..count {
        let (name, bytes, focus) = &samples[case % samples.len()];
        let damaged = mutate(&mut rng, bytes, *focus);
        match catch_unwind(AssertUnwindSafe(|| check(name, &damaged))) {
            Ok(None) => {}
            Ok(Some(error)) if !error.contains('\n') && error.contains(name.as_str()) => refused += 1,
            Ok(Some(error)) => failures.push(format!("case {case} ({name}): not one line naming it: {error:?}")),
            Err(_) => failures.push(format!("case {case} ({name}): panicked")),
        }
    }
    assert!(
        failures.is_empty(),
        "{what}, seed {SEED:#x}: {} of {count} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The damage must reach the parsers' error paths, or the campaign tests nothing.
    assert!(refused * 5 >= count, "{what}: only {refused} of {count} damaged inputs were refused");
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn mutated_images_decode_or_fail_in_one_line() {
    let dir = fixtures().join("images");
    let mut samples: Vec<(String, Vec<u8>, usize)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), read(&p), 2048))
        .collect();
    samples.sort();
    campaign("images", &samples, 1500, |name, bytes| decode_rgb(bytes, name).err().map(|e| e.to_string()));
}

#[test]
fn mutated_manifests_parse_or_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = edgecap_tests::export_reference(
        &edgecap_tests::reference("clipcap-mlp.json"),
        &fixtures(),
        &dir.path().join("b"),
    );
    let text = read(&bundle.join("bundle.toml"));
    let samples = [("bundle.toml".to_string(), text.clone(), text.len())];
    campaign("manifests", &samples, 3000, |name, bytes| {
        let text = String::from_utf8_lossy(bytes);
        edgecap_engine::bundle::parse_manifest(name, &text).err().map(|e| e.to_string())
    });
}

#[test]
fn mutated_npy_headers_read_or_fail_in_one_line() {
    let table = npy::to_bytes(&[40, 8], &(0..320).map(|i| i as f32 * 0.25).collect::<Vec<f32>>());
    let ids = npy::to_bytes(&[12], &(0..12).map(i64::from).collect::<Vec<i64>>());
    let samples = [("table.npy".to_string(), table, 160), ("ids.npy".to_string(), ids, 160)];
    campaign("npy", &samples, 3000, |name, bytes| match name {
        "table.npy" => npy::from_bytes::<f32>(name, bytes).err().map(|e| e.to_string()),
        _ => npy::from_bytes::<i64>(name, bytes).err().map(|e| e.to_string()),
    });
}

/// Writes `bytes` to a file named `name` in a fresh folder and runs `read` on it.
fn through_a_file(name: &str, bytes: &[u8], read: impl Fn(&Path) -> Option<String>) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    read(&path)
}

#[test]
fn mutated_safetensors_read_or_fail_in_one_line() {
    // A support memory (edgecap's format) and a CLIP checkpoint (Hugging Face's), damaged in
    // their length prefix and JSON header.
    let memory = SupportMemory { rows: 3, dim: 4, values: MemoryValues::F32((0..12).map(|i| i as f32).collect()) };
    let memory = memory.to_bytes(&HashMap::new());
    let clip = read(&fixtures().join("models/clip-tiny/model.safetensors"));
    let header = |b: &[u8]| 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let samples = [
        ("memory.safetensors".to_string(), memory.clone(), header(&memory)),
        ("model.safetensors".to_string(), clip.clone(), header(&clip)),
    ];
    campaign("safetensors", &samples, 600, |name, bytes| {
        through_a_file(name, bytes, |path| match name {
            "memory.safetensors" => SupportMemory::read(path).err().map(|e| e.to_string()),
            _ => read_tensors(path).err().map(|e| e.to_string()),
        })
    });
}

#[test]
fn mutated_torch_pickles_read_or_fail_in_one_line() {
    // The checkpoint's pickle damaged, the zip around it rebuilt intact (damage to the zip
    // itself stops at its checksums, before the pickle is read).
    let original = read(&fixtures().join("models/clipcap-mlp.pt"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&original)).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.push((entry.name().to_string(), data));
    }
    let pickle = entries.iter().position(|(n, _)| n.ends_with("data.pkl")).expect("a data.pkl");
    let samples = [("clipcap.pt".to_string(), entries[pickle].1.clone(), entries[pickle].1.len())];
    campaign("pickles", &samples, 400, |name, damaged| {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (i, (entry, data)) in entries.iter().enumerate() {
            zip.start_file(entry.as_str(), stored).unwrap();
            zip.write_all(if i == pickle { damaged } else { data }).unwrap();
        }
        let bytes = zip.finish().unwrap().into_inner();
        through_a_file(name, &bytes, |path| read_tensors(path).err().map(|e| e.to_string()))
    });
}
