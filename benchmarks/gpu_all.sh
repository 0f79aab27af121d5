#!/usr/bin/env bash
# The GPU tests and the GPU benchmarks, on a CUDA machine (pip install -e ".[cuda,test]"):
#
#   bash benchmarks/gpu_all.sh [OUT_DIR] [MODEL_DIR]
#
# OUT_DIR (default gpu-results) receives gpu-tests.log, gpu_suite.json and gpu_suite.log.
# MODEL_DIR defaults to the cached default model (pulled and converted on first use); a
# directory with only config.json and the tokenizer gets random bf16 weights of that shape
# (benchmarks/gpu_suite.py). A failing part does not stop the others.
set -uo pipefail
OUT=${1:-gpu-results}
MODEL=${2:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ -z "$MODEL" ]]; then
  MODEL=$(python3 -c 'from tinygpt.runtime.models import resolve_model; print(resolve_model("smollm2-135m-instruct"))')
fi
python3 benchmarks/gpu_suite.py --model-dir "$MODEL" --out "$OUT/gpu_suite.json" 2>&1 | tee "$OUT/gpu_suite.log"
python3 -m pytest -m gpu -q -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu-tests.log"
