#!/usr/bin/env bash
# Runs the whole edgecap test suite on a fresh Debian/Ubuntu machine with a Rust toolchain.
# Installs what the tests need first (nothing beyond cargo for now; MQTT, serial and ARM tests
# add Debian packages here), then runs every test once.
set -euo pipefail
cd "$(dirname "$0")/.."

# Dependencies are built with opt-level 3 even in the test profile (see Cargo.toml): the
# numerical tests on unoptimised tract would be 10-50x slower.
cargo test --workspace --locked "$@"
