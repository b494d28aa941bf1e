#!/usr/bin/env bash
# Runs the whole edgecap test suite on a fresh Debian/Ubuntu machine with a Rust toolchain
# (rustup). Installs what the tests need first, then runs every test once:
#   1. the workspace's tests on this machine (x86_64);
#   2. the ARM device builds (aarch64, armv7), cross-compiled in release, with the engine's tests
#      and end-to-end captions run under qemu-user on Cortex-A72, Cortex-A76 and Cortex-A7;
#   3. the .deb packages, unpacked into an arm64 / armhf root and run from there.
# Extra arguments go to step 1's `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# mosquitto + socat: the service tests' real broker and pseudo-terminal pairs; curl and a Python
# virtual environment with the official openai package: the HTTP API's real clients. ffmpeg and
# GStreamer's RTSP server (python3-gi; x264 from plugins-ugly): the RTSP source and the real
# server its tests stream a photograph from. Cross gcc,
# their C libraries and qemu-user: the ARM builds and their emulated runs. libclang: the camera
# backend's V4L2 bindings (bindgen), built into the device binaries.
packages=(mosquitto socat curl python3-venv ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross
    libc6-dev-armhf-cross qemu-user dpkg libclang-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
# Debian starts a system mosquitto on 1883; the tests start their own on free ports.
rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
if ! target/test-venv/bin/python -c "import openai" 2>/dev/null; then
    python3 -m venv target/test-venv
    target/test-venv/bin/pip install --quiet "openai==3.63.0"
fi
export EDGECAP_TEST_PYTHON=$PWD/target/test-venv/bin/python

# Each step prints how long it took, so a slow CI run shows where its time went.
step() { echo "test.sh: $1 done after $((SECONDS / 60)) min $((SECONDS % 60)) s (total)"; }

# 1. Dependencies are built with opt-level 3 even in the test profile (see Cargo.toml): the
# numerical tests on unoptimised tract would be 10-50x slower.
cargo test --workspace --locked "$@"
step "x86 workspace tests"

# 2. ARM. The release binaries the boards run, with the camera backend, as packaged (and
# host-tools without its training feature, to run validate on the board).
# Every ARM command builds on one compilation of tract per target (15 min each here), which needs:
# - the same dependency features: cargo unifies them over the packages named on its command
#   line, so every ARM command names the same three packages and features (the tests'
#   dev-dependencies add none: engine/Cargo.toml);
# - no cross-crate LTO: with it cargo compiles dependencies differently for a build of binaries
#   and for a build of tests, and the engine tests rebuilt all of tract. These builds (and the
#   packages made from them below) are therefore made without the release profile's thin LTO.
export CARGO_PROFILE_RELEASE_LTO=false
arm_targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
arm_packages=(-p edgecap-engine -p edgecap -p host-tools --no-default-features --features edgecap/camera)
engine_tests=(--lib --test tokenizer_reference --test clip_tokenizer_reference --test preprocess_reference)
for target in "${arm_targets[@]}"; do
    cargo build --release --locked --target "$target" "${arm_packages[@]}"
    step "$target release build"
done
# An assembler without `sdot` makes tract silently leave its dot-product int8 kernel out.
if ! grep -q arm64simd_mmm_i32_8x8_dot target/aarch64-unknown-linux-gnu/release/edgecap; then
    echo "test.sh: the aarch64 edgecap lacks tract's SDOT int8 kernel (assembler too old?)" >&2
    exit 1
fi
# The engine's (and host-tools' library) tests on each emulated CPU (qemu-user is the runner; see
# .cargo/config.toml).
for cpu in cortex-a72 cortex-a76; do
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
        cargo test --release --locked --target aarch64-unknown-linux-gnu "${arm_packages[@]}" "${engine_tests[@]}"
    step "engine tests on $cpu"
done
TRACT_CPU_ARM32_NEON=true \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -cpu cortex-a7 -L /usr/arm-linux-gnueabihf" \
    cargo test --release --locked --target armv7-unknown-linux-gnueabihf "${arm_packages[@]}" "${engine_tests[@]}"
step "engine tests on cortex-a7"

# 3. Packages, then the end-to-end emulated runs (captions, validate, the installed package).
# `--workspace` again, so the x86 build of step 1 is reused rather than rebuilt for one package.
scripts/package-deb.sh "${arm_targets[@]}"
step "packages"
cargo test --workspace --locked --test arm_emulation --test packaging --test stage_markers -- --ignored
step "emulated end-to-end tests"
