#!/usr/bin/env bash
# Reproduces the default model (models/default) from nothing: synthetic scenes, a CLIP-style
# dual encoder trained on them, a DeCap decoder trained on their captions, export, int8
# quantization, and the held-out scores docs/training.md quotes. Seeded: a rerun on the same machine
# gives the same bundle. Takes about 3 h 20 min on 2 cores (measured on an AMD EPYC: scenes
# 10–17 min on both cores; encoder about 3 hours with the fused training kernels, six rounds;
# decoder 6; export and scores 2).
#   scripts/train-default-model.sh [WORK_DIR]   (default target/default-model)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/default-model}
mkdir -p "$work"
# Dependencies are optimised even in the dev profile (Cargo.toml); this build is shared with the tests.
cargo build --locked -p host-tools -p edgecap
ht=target/debug/host-tools

# 1. Data: seed 1 = training scenes (48000: trained on 12000 the model was right on 83% of its
#    training scenes and 66% of held-out ones; the same steps on four times the pictures: 74%),
#    half of them as a camera would take them (other sizes, backgrounds, exposure, blur, noise,
#    JPEG); seed 2 = held-out scenes (never trained on), plain
#    and the same 500 taken by the camera.
[ -f "$work/train/captions.tsv" ] || $ht scenes generate --out "$work/train" --count 48000 --seed 1 --rendering mixed
[ -f "$work/heldout/captions.tsv" ] || $ht scenes generate --out "$work/heldout" --count 500 --seed 2
[ -f "$work/heldout-camera/captions.tsv" ] ||
    $ht scenes generate --out "$work/heldout-camera" --count 500 --seed 2 --rendering camera
cut -f2 "$work/train/captions.tsv" > "$work/captions.txt"
sort -u "$work/captions.txt" > "$work/memory-captions.txt"

# 2. The dual encoder (CLIP layout: a ViT on 80×80 images in 16-pixel patches, a 2-layer text
#    tower, a BPE vocabulary learned from the captions). --hard-negatives puts captions one word
#    apart, or with words swapped between the objects, in every batch and --text-contrast keeps
#    distinct captions apart in the text tower: without them both towers ignore positions.
#    Six rounds of linear decay: 3200 steps, then resumes to 6400, 9600, 12800, 16000 and 19200
#    (the rate restarts at a half, a third … a sixth; held-out relation scenes right after rounds
#    1–6: 16%, 52%, 69%, 76%, 88%, 93%; a seventh round moved nothing, and one long round from
#    12800 to 19200 did worse than the two short ones). ~3 hours; one thread is as fast as two,
#    and is how the committed model was trained.
clip_args=(--data "$work/train/captions.tsv" --out "$work/clip" --image-size 80 --patch-size 16 --batch 128
    --lr 1e-3 --lr-decay --hard-negatives --text-contrast 1 --seed 1)
clip_step() { sed -n 's/^  "step": \([0-9]*\),$/\1/p' "$work/clip/checkpoint.json" 2>/dev/null || true; }
for steps in 3200 6400 9600 12800 16000 19200; do
    done_steps=$(clip_step)
    [ "${done_steps:-0}" -ge $steps ] && continue
    resume=()
    [ -n "$done_steps" ] && resume=(--resume)
    RAYON_NUM_THREADS=1 $ht train clip "${clip_args[@]}" --steps $steps "${resume[@]}"
done

# 3. The DeCap decoder, on the captions alone.
[ -f "$work/decap/decap.safetensors" ] || $ht train decap --clip "$work/clip" --captions "$work/captions.txt" \
    --layers 2 --hidden 128 --heads 4 --batch 128 --lr 1e-3 --steps 800 --seed 1 --out "$work/decap"

# 4. Bundles: fp32, then int8 calibrated on training scenes.
rm -rf "$work/fp32" "$work/int8" "$work/calibration"
$ht export --clip "$work/clip" --decap "$work/decap/decap.safetensors" --decoder-heads 4 \
    --memory-captions "$work/memory-captions.txt" --out "$work/fp32"
mkdir -p "$work/calibration"
cp "$work"/train/scene-000[0-4]?.* "$work/calibration/"
# --all-int8: at this size int8 is not faster in tract on x86 (it is the device precision,
# and 2.4× smaller).
$ht quantize "$work/fp32" --out "$work/int8" --calibration "$work/calibration" --all-int8

# 5. Held-out scores, fp32 and int8, plain and camera renderings (docs/training.md's table).
for bundle in fp32 int8; do
    for split in heldout heldout-camera; do
        $ht scenes score --bundle "$work/$bundle" --scenes "$work/$split" | tee "$work/score-$bundle-$split.txt"
    done
done

# 6. Install: models/default is what `edgecap` embeds.
rm -rf models/default
cp -r "$work/int8" models/default
echo "models/default updated; rebuild edgecap to embed it"
