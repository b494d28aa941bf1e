#!/usr/bin/env bash
# The main job, end to end on this machine: caption images with the device program on its
# built-in default model (models/default, embedded in the binary; no --bundle needed).
#
# The default model is the project's own (scripts/train-default-model.sh): a small CLIP-style
# encoder and DeCap decoder trained on synthetic scenes of coloured shapes. The demo draws a few
# scenes it has never seen (seed 3; training used seed 1), as the generator renders them and as a
# camera might take them (other sizes, backgrounds, blur, noise, JPEG), and captions them next to
# their true captions, then captions the fixture photographs, which lie outside its world. Extra
# arguments go to `edgecap caption` (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: cargo not found; install Rust with rustup first" >&2; exit 2; }
cargo build --release --locked -p edgecap -p host-tools
scenes=target/demo-scenes camera=target/demo-scenes-camera
[ -f "$scenes/captions.tsv" ] || target/release/host-tools scenes generate --out "$scenes" --count 8 --seed 3
[ -f "$camera/captions.tsv" ] ||
    target/release/host-tools scenes generate --out "$camera" --count 8 --seed 3 --rendering camera
echo "== true captions of the new scenes (the same eight in both folders)"
sed 's/\t/: /' "$scenes/captions.tsv"
echo "== edgecap caption (built-in model)"
target/release/edgecap caption "$@" "$scenes"/*.png "$camera"/*.jpg tests/fixtures/images/*
