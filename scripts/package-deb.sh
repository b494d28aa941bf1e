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

# The default model (trained by scripts/train-default-model.sh, committed) is packaged too.
[ -f models/default/bundle.toml ] || { echo "package-deb.sh: models/default is missing" >&2; exit 2; }

for target in "${targets[@]}"; do
    # The device build has the camera backend (V4L2 through nokhwa; bindgen needs libclang-dev).
    # Built together with host-tools (without its training feature), exactly as scripts/test.sh
    # builds (and tests) it.
    cargo build --release --locked --target "$target" -p edgecap -p host-tools --no-default-features \
        --features edgecap/camera
    cargo deb --no-build --locked -p edgecap --target "$target"
done
