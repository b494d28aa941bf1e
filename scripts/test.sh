#!/usr/bin/env bash
# Runs the whole edgecap test suite on a fresh Debian/Ubuntu machine with a Rust toolchain.
# Installs what the tests need first, then runs every test once.
set -euo pipefail
cd "$(dirname "$0")/.."

# The service tests use a real MQTT broker (mosquitto) and a real pseudo-terminal pair (socat).
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v socat >/dev/null || need+=(socat)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
# Debian starts a system mosquitto on 1883; the tests start their own on free ports, so it is
# not needed (and harmless).

# Dependencies are built with opt-level 3 even in the test profile (see Cargo.toml): the
# numerical tests on unoptimised tract would be 10-50x slower.
cargo test --workspace --locked "$@"
