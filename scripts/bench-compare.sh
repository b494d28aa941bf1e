#!/usr/bin/env bash
# Regenerates the side-by-side benchmark (edgecap fp32/int8 vs PyTorch vs ONNX Runtime fp32/int8
# on the full-size ClipCap model) and its table in docs/benchmarks.md, bench/results.md and
# bench/results.json. See the docstring of bench/compare.py for what is measured.
#
#   scripts/bench-compare.sh [--python PY] [--rounds N] [--threads N]
#
# PY needs: pip install torch transformers onnxruntime onnx pillow numpy scikit-image
# (scikit-image only for the fixture photographs). Everything it makes stays under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

python=python3
rounds=5
threads=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        *) echo "usage: $0 [--python PY] [--rounds N] [--threads N]" >&2; exit 2 ;;
    esac
done

# compare.py rewrites docs/benchmarks.md between these marker lines: fail now, not after the build.
for marker in '<!-- bench:compare:start -->' '<!-- bench:compare:end -->'; do
    if ! grep -qxF "$marker" docs/benchmarks.md; then
        echo "bench-compare.sh: docs/benchmarks.md lacks the line $marker" >&2
        exit 1
    fi
done

fixtures=${EDGECAP_FULL_FIXTURES:-target/full-fixtures}
fp32=target/bench/fp32
int8=target/bench/int8

# The binaries under test: host-tools (export, quantize, bench, trace) and edgecap (start-up time).
# No default features: the benchmark needs no training code.
cargo build --release --locked -p host-tools --no-default-features -p edgecap

# Full-size random-weight models (CLIP ViT-B/32, ClipCap MLP, distilgpt2-shaped GPT-2) and the
# photographs, made by the PyTorch reference script; --no-stop-search skips its hours-long tuning
# of caption lengths and --models-only its reference outputs, which a benchmark with a fixed
# token count does not need.
if [ ! -f "$fixtures/models/clipcap-mlp.pt" ]; then
    "$python" tests/fixtures/make_fixtures.py --full "$fixtures" --no-stop-search --models-only
fi

# The bundles are made afresh by the host-tools just built, so that a change to the exporter or
# the quantizer is what gets measured (a bundle left from an older build would not show it); the
# ORT int8 graphs, quantized from the fp32 bundle's, go with them.
rm -rf "$fp32" "$int8" target/bench/ort-int8

# The fp32 bundle: the same weights PyTorch loads, as edgecap's ONNX graphs (ORT runs these too).
target/release/host-tools export --clip "$fixtures/models/clip-tiny" \
    --clipcap "$fixtures/models/clipcap-mlp.pt" --lm "$fixtures/models/gpt2-tiny" \
    --tokenizer tests/fixtures/gpt2-tokenizer --out "$fp32"

# The int8 bundle, calibrated on the benchmark photographs (host-tools' default static scheme).
target/release/host-tools quantize "$fp32" --out "$int8" --calibration "$fixtures/images"

# The measurement itself: alternating rounds of all five runtimes; the ORT int8 graphs are
# quantized on first use into target/bench/ort-int8.
"$python" bench/compare.py --fp32 "$fp32" --int8 "$int8" --fixtures "$fixtures" \
    --host-tools target/release/host-tools --edgecap target/release/edgecap \
    --rounds "$rounds" --threads "$threads" --update-readme docs/benchmarks.md
