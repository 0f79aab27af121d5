#!/usr/bin/env bash
# The GPU benchmarks and the GPU tests, on a CUDA machine (pip install -e ".[cuda,test]"),
# in under 8 minutes:
#
#   bash benchmarks/gpu_all.sh [OUT_DIR] [MODEL_DIR]
#
# OUT_DIR (default $OUT, else gpu-results) receives gpu_suite.json / .log (single-stream
# ratios, aggregate decode at 1/16/64/128 clients with the model thread's time per step by
# phase, constrained ÷ free, LoRA / QLoRA ÷ a bare LoRA step, bandwidth shares),
# step_ablation.log (the batch-1 step's host time, one difference from the bare loop at a
# time), profile_serving.json / .log (cProfile of the model thread under 128 clients) and
# gpu-tests.log (pytest -m gpu), plus timings.txt. MODEL_DIR defaults to the cached default
# model (pulled and converted on first use); a directory with only config.json and the
# tokenizer gets random bf16 weights of that shape (benchmarks/gpu_suite.py). Each part has a
# share of a 480 s budget and a failing or slow part does not stop the others;
# GPU_ALL_PARTS (below) runs some of them, in the order given.
set -uo pipefail
OUT=${1:-${OUT:-gpu-results}}
MODEL=${2:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$SECONDS
BUDGET=${GPU_ALL_BUDGET_S:-480}
left() { echo $(( BUDGET - (SECONDS - START) )); }
cap() { local l; l=$(left); (( l < 1 )) && l=1; (( l < $1 )) && echo "$l" || echo "$1"; }  # min(cap, time left), >= 1
mark() { echo "$1: $(( SECONDS - START )) s" | tee -a "$OUT/timings.txt"; }

if [[ -z "$MODEL" ]]; then
  MODEL=$(python3 -c 'from tinygpt.runtime.models import resolve_model; print(resolve_model("smollm2-135m-instruct"))')
fi
mark "model ready ($MODEL)"
# GPU_ALL_PARTS picks the parts and their order (default: runtime ablation tests train profile);
# e.g. GPU_ALL_PARTS="tests train" when the runtime was measured already.
for part in ${GPU_ALL_PARTS:-runtime ablation tests train profile}; do
  case $part in
    runtime)  # the headline ratios
      timeout -k 5 "$(cap 130)" python3 benchmarks/gpu_suite.py --model-dir "$MODEL" --out "$OUT/gpu_suite.json" \
        --parts hbm,runtime 2>&1 | tee "$OUT/gpu_suite.log" ;;
    ablation)
      timeout -k 5 "$(cap 60)" python3 benchmarks/gpu_step_ablation.py --model-dir "$MODEL" --batch 1 \
        2>&1 | tee "$OUT/step_ablation.log" ;;
    tests)  # -v: each test's name as it ends, so a run cut short still says which passed
      timeout -k 5 "$(cap 240)" python3 -m pytest -m gpu -v -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu-tests.log" ;;
    train)  # LoRA / QLoRA / a bare LoRA step, then the 1.5B shape
      timeout -k 5 "$(cap 150)" python3 benchmarks/gpu_suite.py --model-dir "$MODEL" --out "$OUT/gpu_suite_train_big.json" \
        --parts hbm,train,big 2>&1 | tee "$OUT/gpu_suite_train_big.log" ;;
    profile)
      (( $(left) > 20 )) && timeout -k 5 "$(cap 40)" python3 benchmarks/profile_serving.py --model-dir "$MODEL" \
        --clients 128 --tokens 128 --sort cumulative 2>&1 | tee "$OUT/profile_serving.log"
      tail -n 1 "$OUT/profile_serving.log" > "$OUT/profile_serving.json" 2>/dev/null ;;
    *) echo "gpu_all.sh: unknown part '$part' (runtime ablation tests train profile)" >&2 ;;
  esac
  mark "$part"
done
exit 0
