"""Where a batch-1 decode step's host time goes: the bare loop, then one difference at a time
up to the runtime's own step, each pipelined the same way (step k+1 queued before token k is
read).

On a GPU a small model's decode is bound by the host (building the graph in Python, then
encoding its kernels in `async_eval`), not by the card, so every extra op in the step shows
up in tok/s. Each variant reports tok/s, and per step the time building the graph (`build`)
and queueing it (`launch`, async_eval) in ms:

    python benchmarks/gpu_step_ablation.py --model-dir MODEL_DIR [--batch 1] [--steps 200]

variants: bare (KVCache, argmax) · bare_logprobs (+ logsumexp and the chosen token's
logprob, what the runtime evaluates) · batch_kv (mlx-lm's BatchKVCache: array offsets and a
left-padding mask) · batch_kv_logprobs · + bias_scatter / bias_dense (an EOS logit_bias as a
scatter-add, or as a dense addend) · ..._nomask (the batch cache without its mask, valid
with no left padding) · runtime_step (BatchGenerator + batch_step, with and
without the bias). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tinygpt.runtime  # noqa: E402,F401  (before mlx: the CPU backend's fast BLAS)


def _pipelined(first, make, n: int) -> dict:
    """Run `make(y) -> (arrays to queue, next y)` n times pipelined; tok/s and ms per phase."""
    import mlx.core as mx

    y = first
    build = launch = 0.0
    start = None
    for i in range(n + 1):
        t0 = time.perf_counter()
        outs, nxt = make(y)
        t1 = time.perf_counter()
        mx.async_eval(*outs)
        t2 = time.perf_counter()
        y.tolist()
        if i == 0:
            start, build, launch = time.perf_counter(), 0.0, 0.0
        else:
            build += t1 - t0
            launch += t2 - t1
        y = nxt
    y.tolist()
    wall = time.perf_counter() - start
    return {"tok_s": first.shape[0] * n / wall, "ms_per_step": 1e3 * wall / n,
            "build_ms": 1e3 * build / n, "launch_ms": 1e3 * launch / n}


def variant(model, name: str, batch: int, n: int, ban_id: int) -> dict:
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

    vocab = model.args.vocab_size
    prompt = mx.random.randint(0, min(1000, vocab), (batch, 32), key=mx.random.key(batch))
    cache = [BatchKVCache([0] * batch) for _ in model.layers] if "batch_kv" in name else make_prompt_cache(model)
    logits = model(prompt, cache=cache)[:, -1, :]
    if name.endswith("_nomask"):
        # No left padding in this batch, so a one-token step needs no mask: what skipping
        # BatchKVCache's mask (built every step, and SDPA with a mask array) would save.
        for c in cache:
            c.make_mask = lambda *a, **k: None
    first = mx.argmax(logits, axis=-1)
    mx.eval(first, [c.state for c in cache])
    rows = mx.arange(batch, dtype=mx.int32)
    cols = mx.full((batch,), ban_id, dtype=mx.int32)
    dense = mx.zeros((batch, vocab), dtype=logits.dtype).at[rows, cols].add(mx.array(-100.0).astype(logits.dtype))
    mx.eval(dense)
    logprobs_wanted = "logprobs" in name

    def make(y):
        out = model(y[:, None], cache=cache)[:, -1, :]
        if "bias_scatter" in name:
            out = out.at[rows, cols].add(mx.full((batch,), -100.0).astype(out.dtype))
        elif "bias_dense" in name:
            out = out + dense
        if not logprobs_wanted:
            s = mx.argmax(out, axis=-1)
            return (s,), s
        lp = out - mx.logsumexp(out, axis=-1, keepdims=True)
        s = mx.argmax(lp, axis=-1)
        chosen = mx.take_along_axis(lp, s.reshape(-1, 1), axis=-1).reshape(-1)
        return (s, lp, chosen), s

    return _pipelined(first, make, n)


VARIANTS = ["bare", "bare_logprobs", "batch_kv", "batch_kv_logprobs",
            "batch_kv_logprobs_bias_scatter", "batch_kv_logprobs_bias_dense", "batch_kv_logprobs_bias_dense_nomask"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mlx.core as mx
    import mlx_lm
    from gpu_suite import batch_generator_rate, random_weights

    random_weights(args.model_dir)  # a directory with only the config and tokenizer: random weights
    model, tokenizer = mlx_lm.load(str(args.model_dir))
    if mx.default_device() == mx.gpu:
        model.set_dtype(mx.bfloat16)
    eos = sorted(tokenizer.eos_token_ids)[0]
    res: dict = {"device": str(mx.default_device()), "batch": args.batch, "steps": args.steps}
    runs: dict[str, list[dict]] = {}
    # Interleaved repeats: a noisy host drifts over a run, and each variant should see the same drift.
    for _ in range(args.repeats):
        for name in VARIANTS:
            runs.setdefault(name, []).append(variant(model, name, args.batch, args.steps, eos))
        for label, ban in (("runtime_step", None), ("runtime_step_bias", {str(eos): -100})):
            r = batch_generator_rate(model, args.batch, args.steps, ban)
            runs.setdefault(label, []).append({"tok_s": r["tok_s"], "ms_per_step": r["ms_per_step"],
                                               "build_ms": r["host_ms"], "launch_ms": r["launch_ms"]})
    for name, rs in runs.items():
        best = max(rs, key=lambda r: r["tok_s"])
        res[name] = {**best, "median_tok_s": statistics.median(r["tok_s"] for r in rs)}
    ref = res["bare"]["tok_s"]
    res["share_of_bare"] = {name: res[name]["tok_s"] / ref for name in runs}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
