#!/usr/bin/env bash
# Builds the Debian packages of the device program: target/<triple>/debian/edgecap_*_{arm64,armhf}.deb.
# Each holds /usr/bin/edgecap, the systemd unit, /etc/edgecap/edgecap.toml and the default model
# bundle (/usr/share/edgecap/default). Needs the cross toolchains and libclang-dev
# (scripts/test.sh installs them); installs cargo-deb when missing. Pass targets to build only some: scripts/package-deb.sh aarch64-unknown-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

command -v cargo-deb >/dev/null || cargo install cargo-deb --version 3.8.0 --locked --no-default-features

# The default model: exported from the test fixtures until a trained one is committed.
if [ ! -f models/default/bundle.toml ]; then
    cargo build --locked -p host-tools
    target/debug/host-tools export --clip tests/fixtures/models/clip-tiny \
        --clipcap tests/fixtures/models/clipcap-mlp.pt --heads 2 \
        --tokenizer tests/fixtures/gpt2-tokenizer --out models/default
fi

for target in "${targets[@]}"; do
    # The device build has the camera backend (V4L2 through nokhwa; bindgen needs libclang-dev).
    # Built together with host-tools, exactly as scripts/test.sh builds (and tests) it.
    cargo build --release --locked --target "$target" -p edgecap -p host-tools --features edgecap/camera
    cargo deb --no-build --locked -p edgecap --target "$target"
done
