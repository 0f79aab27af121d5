"""The runtime's aggregate decode against a bare batched loop of the same model, and where the
model thread's time goes (runs on the CPU or a GPU, whichever MLX picks).

    python benchmarks/serving_overhead.py                      # the tiny test model
    python benchmarks/serving_overhead.py --model DIR_OR_NAME [--clients 1,16,64,128] [--tokens 64]

Against a `tinygpt serve` subprocess with `--max-batch` = the largest client count (the CPU
default of 16 would cap the batch; a GPU's default is 256), in one run:

- bare: model call + argmax with a KV cache, step k+1 queued before token k is read, at
  each client count as the batch; mlx-lm `stream_generate` at batch 1;
- single: one SSE stream's decode tok/s ÷ stream_generate and ÷ the bare loop at batch 1;
- aggregate: N concurrent clients (one request each, `--tokens` tokens, EOS banned), whole
  responses and SSE streams, tok/s ÷ the bare loop at batch N, with the decode steps the
  model thread ran and its time split (from /metrics `tinygpt_decode_step_seconds_total`):
  waiting for the device, mlx-lm's step around it, the per-token work after it.

Last line: the JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tinygpt.runtime  # noqa: E402,F401  (BLAS decision before mlx)


def bare_loop(model, batch: int, n: int, vocab: int, prompt_len: int = 32) -> float:
    """Model call + argmax with a KV cache, step k+1 queued before token k is read; tok/s."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    prompt = mx.random.randint(0, min(1000, vocab), (batch, prompt_len), key=mx.random.key(batch))
    y = mx.argmax(model(prompt, cache=cache)[:, -1, :], axis=-1)
    mx.eval(y)
    start = None
    for i in range(n + 1):
        nxt = mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)
        mx.async_eval(nxt)
        y.tolist()
        if i == 0:
            start = time.perf_counter()  # after the first step: warm kernels
        y = nxt
    y.tolist()
    return batch * n / (time.perf_counter() - start)


def phases(server) -> dict[str, float]:
    out = {"steps": 0.0}
    for line in server.metrics().splitlines():
        if line.startswith("tinygpt_decode_steps_total"):
            out["steps"] = float(line.split()[-1])
        elif line.startswith('tinygpt_decode_step_seconds_total{phase="'):
            out[line.split('"')[1]] = float(line.split()[-1])
        elif line.startswith("tinygpt_decode_step_cpu_seconds_total"):
            out["cpu"] = float(line.split()[-1])
    return out


def aggregate(server, clients: int, n: int, ban: dict, stream: bool, sampled: bool = False) -> dict:
    """`clients` concurrent requests of `n` tokens; greedy, or `sampled` (temperature 0.8,
    top_p 0.95, each client its own seed: every row its own sampler, as agents send)."""
    from runtime_throughput import PROMPT

    tokens, errors = [], []

    def client(i: int) -> None:
        body = {"model": "base", "max_tokens": n, "temperature": 0, "logit_bias": ban,
                "messages": [{"role": "user", "content": f"Client {i}: {PROMPT[:80]}"}]}
        if sampled:
            body |= {"temperature": 0.8, "top_p": 0.95, "seed": i}
        try:
            if stream:
                tokens.append(server.stream(body)[2]["completion_tokens"])
            else:
                tokens.append(server.request("POST", "/v1/chat/completions", body)["usage"]["completion_tokens"])
        except Exception as e:  # noqa: BLE001  (counted and reported)
            errors.append(str(e)[:200])

    before = phases(server)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = phases(server)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    steps = d.pop("steps")
    per_step = {f"{k}_ms_per_step": 1e3 * v / steps for k, v in d.items()} if steps else {}
    return {"clients": clients, "stream": stream, "sampled": sampled, "served": len(tokens), "failed": len(errors), "errors": errors[:3],
            "tokens": sum(tokens), "seconds": wall, "tok_per_s": sum(tokens) / wall, "decode_steps": steps,
            "mean_batch": sum(tokens) / steps if steps else None,
            "wall_ms_per_step": 1e3 * wall / steps if steps else None, **per_step}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model name or directory (default: build the tiny test model)")
    p.add_argument("--clients", default="1,16,64,128")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--single-tokens", type=int, default=128)
    p.add_argument("--no-stream", action="store_true", help="skip the SSE aggregate rows")
    p.add_argument("--sampled", action="store_true",
                   help="also whole responses sampled at temperature 0.8 with a seed each, as a ratio to greedy")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    import mlx.core as mx
    import mlx_lm
    from runtime_throughput import PROMPT, Server, ban_eos, baseline_decode, runtime_decode

    from tinygpt.runtime import device

    tmp = Path(tempfile.mkdtemp(prefix="tinygpt-overhead-"))
    if args.model:
        from tinygpt.runtime.serving.app import resolve_model_dir

        model_dir = resolve_model_dir(args.model)
    else:
        from tests.tiny_model import build_tiny_model

        model_dir = build_tiny_model(tmp / "tiny")
    model, tokenizer = mlx_lm.load(str(model_dir))
    info = device.select()
    device.cast_for_device(model, info)  # the dtype the runtime serves in
    vocab = model.args.vocab_size
    ban = ban_eos(tokenizer)
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    res: dict = {"model": str(args.model or "tiny test model"), "device": info.describe(), "mlx": mx.__version__,
                 "tokens_per_request": args.tokens}
    bare = {b: max(bare_loop(model, b, args.tokens, vocab) for _ in range(2)) for b in sorted(set(clients) | {1})}
    res["bare_tok_s"] = bare
    mlx_lm_rate = max(baseline_decode(model, tokenizer, prompt_ids, args.single_tokens) for _ in range(3))
    del model
    mx.clear_cache()
    top = max(clients)
    server = Server(str(model_dir), tmp, "--max-batch", str(max(top, 16)), "--max-queue", str(4 * top))
    try:
        runs = [runtime_decode(server, messages, args.single_tokens, ban)[0] for _ in range(3)]
        res["single_stream"] = {"runtime_tok_s": max(runs), "mlx_lm_tok_s": mlx_lm_rate, "bare_tok_s": bare[1],
                                "ratio_mlx_lm": max(runs) / mlx_lm_rate, "ratio_bare": max(runs) / bare[1]}
        aggregate(server, min(16, top), 16, ban, False)  # warm-up
        rows = []
        for stream in (False, True) if not args.no_stream else (False,):
            for c in clients:
                row = aggregate(server, c, args.tokens, ban, stream)
                row["share_of_bare"] = row["tok_per_s"] / bare[c]
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        res["aggregate"] = rows
        if args.sampled:
            greedy = {r["clients"]: r["tok_per_s"] for r in rows if not r["stream"]}
            res["sampled"] = []
            for c in clients:
                row = aggregate(server, c, args.tokens, ban, False, sampled=True)
                row["ratio_to_greedy"] = row["tok_per_s"] / greedy[c]
                res["sampled"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        server.close()
    text = json.dumps(res)
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
