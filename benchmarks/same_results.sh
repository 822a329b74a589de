#!/usr/bin/env bash
# Run a fixed set of certframe commands into OUT, on the CPU in fp32 with one thread, so that
# two commits can be compared with benchmarks/same_results.py (a refactor must move nothing):
#   git worktree / checkout OLD;  bash benchmarks/same_results.sh /tmp/old
#   checkout NEW;                  bash benchmarks/same_results.sh /tmp/new
#   python benchmarks/same_results.py /tmp/old /tmp/new
# Covers: certify (golden settings, the bundled DDPM in front, the hierarchical certifier), an
# interrupted certify resumed, an attack run, the demo, segmenter and DDPM training (weights) and
# the denoiser's quality table. About 3 minutes on two cores.
set -euo pipefail
OUT=${1:?usage: same_results.sh OUT}
rm -rf "$OUT"; mkdir -p "$OUT"
export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
C=(--device cpu --quiet)
COMMON=(--dataset synthetic-lung --dataset-option size=64 --segmenter monai --segmenter-option weights=synthetic-lung --sigma 0.25 --n0 10 -n 100
        --alpha 0.001 --tau 0.75 --tau 0.9 --batch-size 50 --seed 0 --limit 4 "${C[@]}")
P=(--precision fp32)
certframe certify "${COMMON[@]}" "${P[@]}" --output "$OUT/certify"
certframe certify "${COMMON[@]}" "${P[@]}" --denoiser ddpm --limit 2 --output "$OUT/ddpm"
certframe certify --dataset synthetic-tumour --segmenter monai --segmenter-option weights=synthetic-tumour-noise0.25 --sigma 0.5 --n0 10 -n 100 --certifier hierarchical --seed 0 --limit 3 \
    --precision fp32 "${C[@]}" --output "$OUT/hierarchical"
# interrupted (Ctrl-C after 8 s, wherever it is), then resumed: must equal the uninterrupted run
timeout -s INT 8 certframe certify "${COMMON[@]}" "${P[@]}" --output "$OUT/resumed" || true
certframe certify "${COMMON[@]}" "${P[@]}" --resume --output "$OUT/resumed"
certframe attack "${COMMON[@]}" --limit 2 --attack pgdl2 --output "$OUT/attack"
certframe demo --images 2 -n 50 "${C[@]}" --output "$OUT/demo"
certframe train segmenter --dataset synthetic-lung --dataset-option size=32 --epochs 2 --seed 0 \
    --network-option 'channels=[4,8]' --network-option 'strides=[2]' "${C[@]}" --output "$OUT/segmenter.safetensors"
certframe train denoiser --dataset synthetic-lung --size 32 --channels 8,16 --steps 6 --batch-size 4 \
    --checkpoint-every 3 --seed 0 "${C[@]}" --output "$OUT/ddpm-trained"
certframe evaluate denoiser --dataset synthetic-lung --dataset-option size=64 --denoiser ddpm --limit 2 \
    --seed 0 --device cpu --sigma 0.25 --output "$OUT/quality.json" > "$OUT/evaluate.txt"
certframe report "$OUT/certify" "$OUT/ddpm" --output "$OUT/report" > "$OUT/report.txt"
echo "same_results: wrote $OUT"
