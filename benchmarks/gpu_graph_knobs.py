"""MLX's CUDA graph settings against decode speed, on a CUDA machine.

    python benchmarks/gpu_graph_knobs.py --model-dir DIR [--out knobs.json]

MLX's CUDA backend records kernels into CUDA graphs of at most `MLX_MAX_OPS_PER_BUFFER`
operations each and keeps up to `MLX_CUDA_GRAPH_CACHE_SIZE` instantiated graphs, cleared
all at once when full. A decode step of the default model's shape is thousands of
operations, so at batch 1 the step is bound by graph updates and launches, not by the card.
Each setting runs in its own process (MLX reads them once) and measures, on the same model
(DIR's config; random bf16 weights when DIR has none): the bare decode loop at batch 1 and
128, the runtime's decode step without the server (BatchGenerator + batch_step) at batch 1
and 128, and mlx-lm's `stream_generate` at batch 1. Ratios are against the default setting
in the same run. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SETTINGS = {
    "default": {},
    "ops100": {"MLX_MAX_OPS_PER_BUFFER": "100"},
    "ops250": {"MLX_MAX_OPS_PER_BUFFER": "250"},
    "ops100_cache1000": {"MLX_MAX_OPS_PER_BUFFER": "100", "MLX_CUDA_GRAPH_CACHE_SIZE": "1000"},
    "ops20_cache1000": {"MLX_MAX_OPS_PER_BUFFER": "20", "MLX_CUDA_GRAPH_CACHE_SIZE": "1000"},
}


def child(model_dir: str) -> dict:
    import tinygpt.runtime  # noqa: F401  (BLAS decision before mlx)

    import mlx.core as mx
    import mlx_lm
    from gpu_suite import bare_loop, batch_generator_rate, stream_generate_rate
    from runtime_throughput import PROMPT, ban_eos

    model, tokenizer = mlx_lm.load(model_dir)
    model.set_dtype(mx.bfloat16)
    ban = ban_eos(tokenizer)
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    out = {"bare": {b: max(bare_loop(model, b, 128) for _ in range(2)) for b in (1, 128)},
           "batch_generator": {b: batch_generator_rate(model, b, 64, ban)["tok_s"] for b in (1, 128)},
           "stream_generate": max(stream_generate_rate(model, tokenizer, prompt_ids, 128) for _ in range(2))}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(str(args.model_dir))))
        return 0
    if not any(args.model_dir.glob("*.safetensors")):
        from gpu_suite import random_weights

        random_weights(args.model_dir)
    res: dict = {}
    for name in args.settings.split(","):
        env = {**os.environ, **SETTINGS[name]}
        done = subprocess.run([sys.executable, __file__, "--model-dir", str(args.model_dir), "--child"],
                              env=env, capture_output=True, text=True)
        res[name] = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-1500:]}
        print(name, json.dumps(res[name]), flush=True)
    base = res.get("default", {})
    if "bare" in base:
        for r in res.values():
            if "bare" in r:
                r["ratio_to_default"] = {f"{k}_{b}": r[k][b] / base[k][b] for k in ("bare", "batch_generator") for b in ("1", "128")}
                r["ratio_to_default"]["stream_generate"] = r["stream_generate"] / base["stream_generate"]
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
