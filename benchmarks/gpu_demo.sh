#!/usr/bin/env bash
# The self-improvement demo on a CUDA machine, both bundled task families, in one device call:
#
#   bash benchmarks/gpu_demo.sh [OUT_DIR] [RUN ...]
#   # RUN: fileops-large, fileops-learn, shop-rounds (default: fileops-large shop-rounds)
#
# fileops in the larger configuration (48 training tasks x 6 attempts, 48 held-out, 48 LoRA
# steps), then shop with two rounds of expert iteration and a quarter of the attempts
# exploring. fileops-learn is the larger fileops run with half the attempts exploring and
# failed episodes relabeled (issue 11's variant, minutes here instead of 40 on 2 CPU cores). Each run's demo-summary.json, its log and /usr/bin/time's peak RSS land in
# OUT_DIR (default $OUT, else gpu-demo); timings.txt has the wall time of each.
set -uo pipefail
OUT=${1:-${OUT:-gpu-demo}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() {  # name, time cap in seconds, demo arguments...
  local name=$1 cap=$2; shift 2
  local t0=$SECONDS timer=()
  [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -v -o "$OUT/$name.time")
  timeout -k 5 "$cap" "${timer[@]}" python3 -m tinygpt.runtime.cli demo \
    --work "/tmp/gpu-demo/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $(( SECONDS - t0 )) s" | tee -a "$OUT/timings.txt"
  cp "/tmp/gpu-demo/$name/demo-summary.json" "$OUT/$name.json" 2>/dev/null
  tail -n 25 "$OUT/$name.log"
}
RUNS=("${@:2}")
(( ${#RUNS[@]} )) || RUNS=(fileops-large shop-rounds)
for r in "${RUNS[@]}"; do
  case $r in
    fileops-large) run fileops-large "${FILEOPS_CAP_S:-330}" --tasks 48 --attempts 6 --test-tasks 48 --iters 48 ;;
    fileops-learn) run fileops-learn "${FILEOPS_CAP_S:-330}" --tasks 48 --attempts 6 --test-tasks 48 --iters 48 --explore 0.5 --hindsight ;;
    shop-rounds) run shop-rounds "${SHOP_CAP_S:-230}" --task shop --tasks 32 --attempts 4 --test-tasks 32 --rounds 2 --explore 0.25 --iters 32 ;;
    *) echo "gpu_demo.sh: unknown run '$r' (fileops-large, fileops-learn, shop-rounds)" >&2; exit 2 ;;
  esac
done
exit 0
