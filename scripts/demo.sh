#!/usr/bin/env bash
# The main job, end to end on this machine: caption real photographs with the device program,
# on the built-in default model (models/default).
#
# Until the project's trained default model lands (issue "Train in Rust"), models/default is
# exported here from the random-weight test fixtures with host-tools, so the captions are
# fluent-looking gibberish; the pipeline (preprocessing, CLIP encoder, mapper, GPT-2 with KV
# cache, decoding) is the real one. Extra arguments go to `edgecap caption` (e.g. --beam 3).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: cargo not found; install Rust with rustup first" >&2; exit 2; }
cargo build --release --locked -p edgecap -p host-tools
if [ ! -f models/default/bundle.toml ]; then
  target/release/host-tools export \
    --clip tests/fixtures/models/clip-tiny \
    --clipcap tests/fixtures/models/clipcap-mlp.pt \
    --heads 2 \
    --tokenizer tests/fixtures/gpt2-tokenizer \
    --out models/default
fi
target/release/edgecap caption "$@" tests/fixtures/images/*
