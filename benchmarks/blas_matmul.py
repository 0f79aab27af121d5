"""MLX on Linux with its bundled reference BLAS vs an optimized OpenBLAS, in one run.

BLAS choice is per process (libmlx.so binds cblas_* once, when mlx is imported), so each
variant runs in its own subprocess: ``TINYGPT_BLAS=off`` for the reference, the default
search for the fast one. Variants alternate for ``--rounds`` rounds and each keeps its
best number, so a neighbour's load on a shared machine skews both alike; the speedups
(fast / reference) are the numbers to compare across machines.

Prints one JSON object; exits 1 when no optimized BLAS is installed.

    python benchmarks/blas_matmul.py --rounds 2 > result.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

# A llama big enough that its matmuls dominate (SmolLM2-135M is 576 wide), small enough
# to initialise in a second.
LLAMA = dict(
    model_type="llama",
    hidden_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=1536,
    vocab_size=8192,
    rms_norm_eps=1e-5,
    rope_theta=10000,
    tie_word_embeddings=True,
)
PREFILL = 128  # prompt tokens in one forward pass
DECODE = 32  # single-token steps with a KV cache


def _per_call(fn, min_seconds: float = 0.3, min_calls: int = 3) -> float:
    """Median seconds per call of `fn` (which must block until its result is computed)."""
    fn()  # warm-up: first-call allocation and kernel setup
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure(sizes: list[int]) -> dict:
    """Everything measured inside one process, with whatever BLAS it got."""
    from tinygpt.runtime.blas import blas_info

    info = blas_info()  # before mlx is imported, so the choice takes effect
    import mlx.core as mx
    from mlx_lm.models import cache, llama

    out: dict = {"blas": info}
    mx.random.seed(0)
    for dtype in (mx.float32, mx.bfloat16):
        for n in sizes:
            a = mx.random.normal((n, n)).astype(dtype)
            b = mx.random.normal((n, n)).astype(dtype)
            mx.eval(a, b)
            seconds = _per_call(lambda a=a, b=b: mx.eval(a @ b))
            name = "fp32" if dtype == mx.float32 else "bf16"
            out[f"matmul_{name}_{n}_gflops"] = round(2 * n**3 / seconds / 1e9, 2)

    model = llama.Model(llama.ModelArgs.from_dict(LLAMA))
    mx.eval(model.parameters())
    prompt = mx.random.randint(0, LLAMA["vocab_size"], (1, PREFILL))
    out["llama_prefill_tok_s"] = round(PREFILL / _per_call(lambda: mx.eval(model(prompt))), 1)

    def decode():
        kv = cache.make_prompt_cache(model)
        mx.eval(model(prompt[:, :8], cache=kv))
        token = prompt[:, 8:9]
        for _ in range(DECODE):
            token = mx.argmax(model(token, cache=kv)[:, -1:], axis=-1)
            mx.eval(token)

    out["llama_decode_tok_s"] = round(DECODE / _per_call(decode, min_calls=2), 1)
    return out


def run_variant(variant: str, sizes: list[int]) -> dict:
    """`measure` in a fresh interpreter; `variant` is "reference" or "fast"."""
    env = {k: v for k, v in os.environ.items() if k not in ("TINYGPT_BLAS", "LD_PRELOAD")}
    if variant == "reference":
        env["TINYGPT_BLAS"] = "off"
    cmd = [sys.executable, __file__, "--worker", "--sizes", *map(str, sizes)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _best(runs: list[dict]) -> dict:
    best = dict(runs[0])
    for run in runs[1:]:
        for key, value in run.items():
            if isinstance(value, (int, float)):
                best[key] = max(best[key], value)
    return best


def _machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mlx": importlib.metadata.version("mlx"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per variant (default 2)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square matmul sizes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.sizes)))
        return 0

    runs: dict[str, list[dict]] = {"reference": [], "fast": []}
    for _ in range(args.rounds):
        for variant in runs:
            runs[variant].append(run_variant(variant, args.sizes))
    reference, fast = _best(runs["reference"]), _best(runs["fast"])
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "fast_blas": fast.pop("blas"),
        "reference_blas": reference.pop("blas"),
        "reference": reference,
        "fast": fast,
        "speedup": {k: round(fast[k] / reference[k], 2) for k in reference},
    }
    print(json.dumps(report, indent=2))
    if report["fast_blas"]["active"] is None:
        print(f"no optimized BLAS active: {report['fast_blas']['reason']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
