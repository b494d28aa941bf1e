#!/usr/bin/env bash
# Profiles edgecap on the boards' CPUs by simulation: the ARM release builds run under qemu-user
# (7.2, Debian's) with the project's TCG plugin (tools/qemu-plugin/edgecap_profile.c), on the
# full-size model (ViT-B/32 + ClipCap MLP + 6-layer 768-wide GPT-2, 50257 tokens), fp32 and int8
# bundles, `--threads 1`, exactly N tokens (20). Prints per CPU model the instructions per stage
# (load, preprocess, image encoder, mapper, first token, per next token), per caption, bytes per
# token, the hot functions, and ESTIMATED times for a Pi 5 / Pi 4 (docs/arm-profile.md states the
# model). Counts are emulated instructions: deterministic, not time.
#
#   scripts/arm-profile.sh [--cpu CPU]... [--bundle fp32|int8|int8-tract]... [--no-cache]
#                          [--one-caption] [--tokens N] [--image IMG] [--unstamped] [--no-build]
#                          [--bench] [--report-only]
#
#   --cpu        cortex-a76 (Pi 5), cortex-a72 (Pi 4), cortex-a7 (armv7 build); default: all three
#   --bundle     fp32, int8 (`quantize --all-int8`), int8-tract (the int8 bundle with
#                EDGECAP_INT8_KERNEL=tract: tract's int8 kernels instead of edgecap's); default:
#                fp32 and int8
#   --no-cache   instructions only, no memory callbacks (several times faster; no DRAM bytes,
#                so estimates are compute-only)
#   --one-caption  caption the image once, not twice (then "per caption" is the first, cold one;
#                fp32 runs are slow under qemu, whose TCG emulates NEON float arithmetic in software)
#   --unstamped  remove the bundle's .verified stamp first: the load then hashes every file
#   --no-build   use the ARM binaries as they are (default: cargo builds them, a no-op if fresh)
#   --report-only  no build, no run: the tables from the runs already in target/arm-profile/runs/
#                (or $EDGECAP_ARM_PROFILE_RUNS, where runs go when it is set)
#   --bench      write bench/arm-profile.{md,json} (default only for a full run: every CPU and
#                bundle, default tokens and image)
#
# Everything it makes stays under target/arm-profile/ (run JSONs: target/arm-profile/runs/).
# The full-size fixtures need: pip install torch transformers pillow numpy scikit-image
set -euo pipefail
cd "$(dirname "$0")/.."

cpus=()
bundles=()
cache=1
captions=2
tokens=20
image=tests/fixtures/images/astronaut.jpg
unstamped=0
build=1
bench=
report_only=0
usage() {
    sed -n '/^#   scripts/,/^# Everything/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) cpus+=("$2"); shift 2 ;;
        --bundle) bundles+=("$2"); shift 2 ;;
        --no-cache) cache=0; shift ;;
        --one-caption) captions=1; shift ;;
        --tokens) tokens=$2; shift 2 ;;
        --image) image=$2; shift 2 ;;
        --unstamped) unstamped=1; shift ;;
        --no-build) build=0; shift ;;
        --bench) bench=1; shift ;;
        --report-only) report_only=1; build=0; shift ;;
        -h|--help) usage ;;
        *) echo "arm-profile.sh: unknown option $1" >&2; usage ;;
    esac
done
full=0
if [ ${#cpus[@]} -eq 0 ] && [ ${#bundles[@]} -eq 0 ] && [ "$tokens" = 20 ] && [ $cache = 1 ] \
    && [ "$image" = tests/fixtures/images/astronaut.jpg ] && [ $unstamped = 0 ] && [ $captions = 2 ]; then
    full=1
fi
[ ${#cpus[@]} -gt 0 ] || cpus=(cortex-a76 cortex-a72 cortex-a7)
[ ${#bundles[@]} -gt 0 ] || bundles=(fp32 int8)
[ -n "$bench" ] || bench=$full
for cpu in "${cpus[@]}"; do
    case "$cpu" in cortex-a76|cortex-a72|cortex-a7) ;; *) echo "arm-profile.sh: unknown CPU $cpu" >&2; exit 2 ;; esac
done
for b in "${bundles[@]}"; do
    case "$b" in fp32|int8|int8-tract) ;; *) echo "arm-profile.sh: unknown bundle $b" >&2; exit 2 ;; esac
done

work=target/arm-profile
# The runs (one JSON per CPU and bundle) and the tables read from them; another folder keeps two
# series apart.
runs=${EDGECAP_ARM_PROFILE_RUNS:-$work/runs}
mkdir -p "$runs"
for tool in qemu-aarch64 qemu-arm gcc nm c++filt; do
    command -v "$tool" >/dev/null || { echo "arm-profile.sh: $tool missing (scripts/test.sh installs qemu-user and the cross toolchains)" >&2; exit 1; }
done

if [ $report_only = 0 ]; then
    # 1. The plugin.
    plugin=$work/edgecap_profile.so
    gcc -shared -fPIC -O2 -Wall -o "$plugin" tools/qemu-plugin/edgecap_profile.c

    # 2. The ARM release binaries, with exactly scripts/test.sh's flags so that they share its
    # compilation of tract (a cross build of tract takes 10-15 min per target).
    export CARGO_PROFILE_RELEASE_LTO=false
    arm_packages=(-p edgecap-engine -p edgecap -p host-tools --no-default-features --features edgecap/camera)
    targets=()
    for cpu in "${cpus[@]}"; do
        case "$cpu" in cortex-a7) t=armv7-unknown-linux-gnueabihf ;; *) t=aarch64-unknown-linux-gnu ;; esac
        [[ " ${targets[*]:-} " == *" $t "* ]] || targets+=("$t")
    done
    for t in "${targets[@]}"; do
        if [ $build = 1 ]; then
            cargo build --release --locked --target "$t" "${arm_packages[@]}"
        fi
        bin=target/$t/release/edgecap
        [ -x "$bin" ] || { echo "arm-profile.sh: $bin missing" >&2; exit 1; }
        # The stage markers must be in the symbol table: the plugin finds them by name.
        nm "$bin" >"$work/nm.txt"
        missing=$(grep -o 'edgecap_stage_[a-z][a-z_]*' engine/src/stage.rs | sort -u | while read -r m; do
            grep -q " T $m\$" "$work/nm.txt" || echo "$m"; done)
        if [ -n "$missing" ]; then
            echo "arm-profile.sh: $bin lacks the stage markers: $missing" >&2
            exit 1
        fi
    done

    # 3. The full-size bundles: the fp32 one of scripts/bench-compare.sh (reused when present), an
    # all-int8 one quantized from it on the fixture photographs.
    fixtures=${EDGECAP_FULL_FIXTURES:-target/full-fixtures}
    fp32=target/bench/fp32
    int8=$work/int8
    if [ ! -f "$fp32/bundle.toml" ] || [ ! -f "$int8/bundle.toml" ]; then
        cargo build --release --locked -p host-tools --no-default-features -p edgecap
        if [ ! -f "$fixtures/models/clipcap-mlp.pt" ]; then
            python3 tests/fixtures/make_fixtures.py --full "$fixtures" --no-stop-search --models-only
        fi
    fi
    if [ ! -f "$fp32/bundle.toml" ]; then
        target/release/host-tools export --clip "$fixtures/models/clip-tiny" \
            --clipcap "$fixtures/models/clipcap-mlp.pt" --lm "$fixtures/models/gpt2-tiny" \
            --tokenizer tests/fixtures/gpt2-tokenizer --out "$fp32"
    fi
    if [ ! -f "$int8/bundle.toml" ]; then
        target/release/host-tools quantize "$fp32" --out "$int8" --all-int8 --calibration "$fixtures/images"
    fi

    # A view of each bundle for the profile: its files linked, its manifest without stop tokens, so
    # that every caption is exactly --max-tokens tokens (a random-weight model may choose '.' at any
    # step; the issue's figures are for 20). Verified and stamped once, natively, so that the emulated
    # load skips the hashing as a board's second start does (--unstamped: it hashes).
    view() {
        local src=$1 dst=$2
        rm -rf "$dst"
        mkdir -p "$dst"
        for f in "$src"/*; do
            [ "$(basename "$f")" = bundle.toml ] || ln -s "$(realpath "$f")" "$dst/"
        done
        sed -E 's/^stop_token_ids = \[.*\]$/stop_token_ids = []/' "$src/bundle.toml" >"$dst/bundle.toml"
        grep -qx 'stop_token_ids = \[\]' "$dst/bundle.toml" || { echo "arm-profile.sh: no stop_token_ids in $src/bundle.toml" >&2; exit 1; }
        # Stamped by this machine's edgecap or host-tools when there is one (the same loader), else
        # by an ARM binary, emulated (slow: a whole load).
        if [ -x target/release/edgecap ]; then
            target/release/edgecap caption --bundle "$dst" --threads 1 --max-tokens 1 "$image" >/dev/null
        elif [ -x target/release/host-tools ]; then
            target/release/host-tools trace --bundle "$dst" --image "$image" --out "$work/trace" >/dev/null
        elif [ -x target/aarch64-unknown-linux-gnu/release/edgecap ]; then
            qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/edgecap caption \
                --bundle "$dst" --threads 1 --max-tokens 1 "$image" >/dev/null
        else
            TRACT_CPU_ARM32_NEON=true qemu-arm -L /usr/arm-linux-gnueabihf target/armv7-unknown-linux-gnueabihf/release/edgecap \
                caption --bundle "$dst" --threads 1 --max-tokens 1 "$image" >/dev/null
        fi
        [ -f "$dst/.verified" ] || { echo "arm-profile.sh: $dst was not stamped as verified" >&2; exit 1; }
    }
    view_of() { case "$1" in fp32) echo fp32 ;; *) echo int8 ;; esac; }
    for b in "${bundles[@]}"; do
        v=$(view_of "$b")
        case "$v" in fp32) src=$fp32 ;; int8) src=$int8 ;; esac
        if [ ! -f "$work/views/$v/bundle.toml" ] || [ "$src/bundle.toml" -nt "$work/views/$v/bundle.toml" ] \
            || [ ! -f "$work/views/$v/.verified" ]; then
            view "$src" "$work/views/$v"
        fi
    done

fi

# 4. The emulated runs: one process per CPU and bundle, the same image captioned twice.
images=("$image")
[ $captions = 1 ] || images+=("$image")
llc_of() { case "$1" in cortex-a76) echo 2048 ;; *) echo 1024 ;; esac; }
report_args=()
for cpu in "${cpus[@]}"; do
    for b in "${bundles[@]}"; do
        case "$cpu" in
            cortex-a7) qemu=(qemu-arm -cpu cortex-a7 -L /usr/arm-linux-gnueabihf); bin=target/armv7-unknown-linux-gnueabihf/release/edgecap ;;
            *) qemu=(qemu-aarch64 -cpu "$cpu" -L /usr/aarch64-linux-gnu); bin=target/aarch64-unknown-linux-gnu/release/edgecap ;;
        esac
        out=$runs/$cpu-$b.json
        if [ $report_only = 1 ]; then
            [ -f "$out" ] && report_args+=(--run "$cpu" "$b" "$bin" "$out")
            continue
        fi
        plugin_args="out=$out"
        [ $cache = 0 ] || plugin_args+=",llc=$(llc_of "$cpu"),ways=16,line=64"
        v=$(view_of "$b")
        kernel=()
        [ "$b" != int8-tract ] || kernel=(EDGECAP_INT8_KERNEL=tract)
        [ $unstamped = 0 ] || rm -f "$work/views/$v/.verified"
        echo "arm-profile.sh: $cpu $b ..." >&2
        started=$SECONDS
        # -d plugin: qemu 7.2 reads the guest's symbol table only while a log is on.
        # RUST_BACKTRACE / RUST_LIB_BACKTRACE unset: with them, every error tract makes and
        # handles while optimising a graph captures a backtrace (anyhow), ~10 % of a load's
        # instructions that a board's service does not spend.
        env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE TRACT_CPU_ARM32_NEON=true "${kernel[@]}" "${qemu[@]}" -d plugin -D /dev/null -plugin "$plugin,$plugin_args" \
            "$bin" caption --bundle "$work/views/$v" --threads 1 --max-tokens "$tokens" --json "${images[@]}" \
            >"$runs/$cpu-$b.captions.jsonl"
        echo "arm-profile.sh: $cpu $b emulated in $((SECONDS - started)) s" >&2
        # The binary's symbols as they were (the report names code from them; a rebuild moves it).
        nm -S --defined-only "$bin" >"$runs/$cpu-$b.nm"
        # The source the binary was built from, as far as git tells (for the tables' heading).
        echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine firmware || echo '+uncommitted engine changes')" \
            >"$runs/$cpu-$b.rev"
        # Exactly N tokens per caption, or the per-token figures mean something else.
        python3 - "$runs/$cpu-$b.captions.jsonl" "$tokens" "$captions" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
n, count = int(sys.argv[2]), int(sys.argv[3])
bad = [l for l in lines if len(l.get("tokens", [])) != n]
if len(lines) != count or bad:
    sys.exit(f"arm-profile.sh: expected {count} captions of {n} tokens: {lines}")
EOF
        report_args+=(--run "$cpu" "$b" "$bin" "$out")
    done
done

# 5. The tables.
md=()
if [ "$bench" = 1 ]; then
    mkdir -p bench
    md=(--md bench/arm-profile.md --json bench/arm-profile.json --preamble "# edgecap on the boards' CPUs, by simulation

Generated by \`scripts/arm-profile.sh\` from runs of the source at $(cat "$runs"/*.rev 2>/dev/null | sort -u | paste -sd, - | sed 's/,/, /g; s/^$/?/'); see docs/arm-profile.md for what is counted and the estimate model. Instruction counts are emulated (qemu-user 7.2 TCG), not measured on a board; every time is an ESTIMATE FROM SIMULATION. Image: \`$image\`, ${tokens} tokens, \`--threads 1\`.

")
fi
python3 tools/qemu-plugin/report.py "${report_args[@]}" "${md[@]}"
