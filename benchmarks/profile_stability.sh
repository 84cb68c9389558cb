#!/usr/bin/env bash
# Issue 14: three `onnxprune profile` runs per model, their JSON and wall time into OUTDIR; then
# `python benchmarks/profile_stability.py OUTDIR` prints the table of docs/measurement.md.
#   cold: a fresh latency cache for every run (nothing carried over: the table and the bound
#         measured from scratch each time);
#   warm: one cache per model shared by its three runs, as a user's default cache is (runs 2
#         and 3 re-validate the cached table and pool the bound's sessions with run 1's).
# Run from the repository root on a quiet machine, nothing else timing (~15 min cold, ~8 warm):
#     bash benchmarks/profile_stability.sh /tmp/stability [cold|warm]
set -u
OUT=${1:?usage: profile_stability.sh OUTDIR [cold|warm]}; MODE=${2:-cold}; mkdir -p "$OUT"
B=.cache/bench
run() { name=$1; shift; model=$1; shift
  shared=$(mktemp -d)
  for i in 1 2 3; do
    if [ "$MODE" = warm ]; then cache=$shared; else cache=$(mktemp -d); fi
    s=$(date +%s.%N)
    .venv/bin/onnxprune profile "$model" "$@" --threads 2 --cache-dir "$cache" -q \
        --json "$OUT/$name$i.json" > "$OUT/$name$i.txt" 2>&1
    e=$(date +%s.%N); echo "$name $i $(echo "$e - $s" | bc)" >> "$OUT/wall.txt"
    [ "$MODE" = warm ] || rm -rf "$cache"
  done
  rm -rf "$shared"; }
run mlp models/digits_mlp.onnx --shape input=256x64
run cnn models/digits_cnn.onnx --shape input=256x1x8x8
run transformer models/digits_transformer.onnx --shape input=256x8x8
run mnist $B/mnist_cnn.onnx --shape input=64x1x28x28
run minilm $B/minilm_l6.onnx --shape input_ids=8x128 --shape attention_mask=8x128
run effnet $B/effnet_lite0.onnx --shape input=8x3x224x224
