"""Everything issue 19 measures on a GPU, in one process, so one device call runs it all.

    python benchmarks/gpu_suite.py --model-dir DIR --out result.json [--parts ...]

DIR holds a model's config.json and tokenizer; without weights in it, random bf16 weights
of the config's shape are written first (seeded N(0, 0.02): speed does not depend on the
values, and never on zeros). All ratios come from this one run on this one card:

- hbm: device-to-device bandwidth (read + write of a 1 GiB array), the ceiling for decode;
- bare: a bare MLX decode loop (model call + argmax, next step queued before reading the
  current token) at batch 1 / 16 / 64 / 128 (and on mlx-lm's generation stream at 1 / 128),
  mlx-lm's `stream_generate` at batch 1, and the runtime's decode step without the server
  (an mlx-lm `BatchGenerator` with `batch_step`, rows biased as the runtime's are);
- runtime: `tinygpt serve` with its defaults (a subprocess; the client is this process):
  single-stream SSE decode ÷ the bare loop and ÷ stream_generate; aggregate decode with
  1 / 16 / 64 / 128 concurrent clients (one request each, 128 tokens, EOS banned) ÷ the bare
  loop at the same batch, with every request's status counted and the model thread's time
  per step by phase (/metrics `tinygpt_decode_step_seconds_total`); constrained
  (tool_choice="required") ÷ free decode;
- train: `tinygpt train` LoRA and QLoRA steps/s ÷ a bare compiled MLX LoRA step (rank 8 on
  every linear of every block, Adam) on the same batches of the same dataset;
- big: the bare loop and stream_generate on a 1.5B shape (28 layers, hidden 1536, vocab
  151,936) with random weights, as a share of the bandwidth limit.

The last line printed is the JSON document (also written to --out after every part).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tinygpt.runtime  # noqa: E402,F401  (BLAS decision before mlx)

BIG_SHAPE = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True}
CLIENTS = (1, 16, 64, 128)
# Writes the JSON so far (set by main): a part cut off by a time limit keeps what it measured.
checkpoint = lambda: None  # noqa: E731


def random_weights(model_dir: Path) -> None:
    """Seeded random bf16 weights of the config's shape, saved where mlx_lm.load finds them."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if list(model_dir.glob("*.safetensors")):
        return
    config = json.loads((model_dir / "config.json").read_text())
    model = build_model(config)
    mx.save_safetensors(str(model_dir / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    config["dtype"] = "bfloat16"
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))


def build_model(config: dict):
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict(config))
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(1), len(params))
    model.update(tree_unflatten([(n, (mx.ones(v.shape) if "norm" in n else 0.02 * mx.random.normal(v.shape, key=k)).astype(mx.bfloat16))
                                 for (n, v), k in zip(params, keys)]))
    mx.eval(model.parameters())
    return model


def weight_bytes(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def hbm_bandwidth() -> dict:
    import mlx.core as mx

    x = mx.random.uniform(shape=(1 << 28,))  # 1 GiB fp32
    mx.eval(x)
    times = []
    for _ in range(12):
        mx.synchronize()
        t = time.perf_counter()
        y = x * 1.0001
        mx.eval(y)
        mx.synchronize()
        times.append(time.perf_counter() - t)
        del y
    sec = statistics.median(times[2:])
    return {"bytes_moved": 2 * x.nbytes, "seconds": sec, "gb_per_s": 2 * x.nbytes / sec / 1e9}


def bare_loop(model, batch: int, n: int, prompt_len: int = 32) -> float:
    """Model call + argmax with a KV cache, step k+1 queued before token k is read; tok/s."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    prompt = mx.random.randint(0, min(1000, model.args.vocab_size), (batch, prompt_len), key=mx.random.key(batch))
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


def bare_loop_stream(model, batch: int, n: int) -> float:
    """The bare loop on mlx-lm's `generation_stream` (where `generate_step` and the runtime's
    BatchGenerator run), to tell a stream effect apart from the rest."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    with mx.stream(generation_stream):
        return bare_loop(model, batch, n)


def batch_generator_rate(model, batch: int, n: int, ban: dict | None, prompt_len: int = 32) -> dict:
    """The runtime's decode step without the server: an mlx-lm `BatchGenerator` with our
    batched step (`batch_step`), `batch` sequences joined at once, greedy, with each row's
    `logit_bias` as the runtime gives it (EOS banned) or none; tok/s over `n` steps and the
    step's time split (graph building + bookkeeping / async_eval / wait for the device)."""
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    from tinygpt.runtime.serving import batch_step
    from tinygpt.runtime.serving.sampling import make_processors, make_sampler

    gen = BatchGenerator(model, stop_tokens=[], completion_batch_size=batch, prefill_batch_size=batch)
    batch_step.install(gen)
    vocab = min(1000, model.args.vocab_size)
    prompts = mx.random.randint(0, vocab, (batch, prompt_len), key=mx.random.key(batch)).tolist()
    procs = [make_processors(prompt_len, logit_bias={int(k): v for k, v in (ban or {}).items()} or None,
                             presence_penalty=None, frequency_penalty=None) for _ in range(batch)]
    gen.insert(prompts, max_tokens=[n + 64] * batch, samplers=[make_sampler(0.0, 1.0, None)] * batch,
               logits_processors=procs)
    while len(gen._generation_batch) < batch:
        gen.next()
    for _ in range(3):
        gen.next()
    gb = gen._generation_batch
    launch = wait = 0.0
    start = time.perf_counter()
    for _ in range(n):
        gen.next()
        launch += gb.launch_s
        wait += gb.wait_s
    wall = time.perf_counter() - start
    gen.close()
    return {"tok_s": batch * n / wall, "ms_per_step": 1e3 * wall / n, "launch_ms": 1e3 * launch / n,
            "wait_ms": 1e3 * wait / n, "host_ms": 1e3 * (wall - launch - wait) / n}


def stream_generate_rate(model, tokenizer, prompt_ids: list[int], n: int) -> float:
    from runtime_throughput import baseline_decode

    return baseline_decode(model, tokenizer, prompt_ids, n)


def part_runtime(res: dict, model_dir: Path, tmp: Path, n: int) -> None:
    import mlx.core as mx
    import mlx_lm
    from runtime_throughput import PROMPT, Server, ban_eos, constrained, runtime_decode
    from serving_overhead import aggregate

    model, tokenizer = mlx_lm.load(str(model_dir))
    model.set_dtype(mx.bfloat16)
    ban = ban_eos(tokenizer)
    messages = [{"role": "user", "content": PROMPT}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    res["weight_bytes"] = weight_bytes(model)
    bare = {b: max(bare_loop(model, b, 128) for _ in range(2)) for b in (1, 16, 64, 128)}
    res["bare_tok_s"] = bare
    res["bare_generation_stream_tok_s"] = {b: bare_loop_stream(model, b, 128) for b in (1, 128)}
    # The runtime's own decode step without the server, at the same batches: the gap from
    # the bare loop to this is the batched step (KV cache, mask, processors); from this to
    # the runtime's aggregate, the engine and HTTP.
    res["batch_generator"] = {b: batch_generator_rate(model, b, 64, ban) for b in (1, 16, 64, 128)}
    res["batch_generator_no_bias"] = {b: batch_generator_rate(model, b, 64, None) for b in (1, 128)}
    checkpoint()
    mlx_lm_rate = max(stream_generate_rate(model, tokenizer, prompt_ids, n) for _ in range(3))
    res["mlx_lm_stream_generate_tok_s"] = mlx_lm_rate
    del model
    mx.clear_cache()
    server = Server(str(model_dir), tmp)
    try:
        health = server.request("GET", "/health")
        res["health"] = health
        res["model_card"] = server.request("GET", "/v1/models")["data"][0]
        runs = [runtime_decode(server, messages, n, ban)[0] for _ in range(3)]
        single = max(runs)
        res["single_stream"] = {"runtime_tok_s": single, "all": runs, "bare_tok_s": bare[1],
                                "mlx_lm_tok_s": mlx_lm_rate, "ratio_bare": single / bare[1],
                                "ratio_mlx_lm": single / mlx_lm_rate}
        checkpoint()
        aggregate(server, 16, 16, ban, False)  # warm-up: batch shapes compiled once
        agg = []
        for c in CLIENTS:
            row = aggregate(server, c, 128, ban, False)
            ref = bare.get(c)
            row["bare_tok_s_same_batch"] = ref
            row["share_of_bare"] = row["tok_per_s"] / ref if ref else None
            agg.append(row)
            res["aggregate"] = agg
            checkpoint()
        res["aggregate"] = agg
        # Sampled requests, a seed each (every row its own sampler), against greedy.
        top = max(CLIENTS)
        row = aggregate(server, top, 128, ban, False, sampled=True)
        row["ratio_to_greedy"] = row["tok_per_s"] / agg[-1]["tok_per_s"]
        res["sampled"] = row
        checkpoint()
        res["constrained"] = constrained(server, n, ban)
        res["metrics_device_line"] = [line for line in server.metrics().splitlines() if line.startswith("tinygpt_device_info")]
    finally:
        server.close()


def _chat_rows(n: int) -> list[dict]:
    words = "the river city market bridge museum harbor train station garden tower library".split()
    rows = []
    for i in range(n):
        user = " ".join(words[(i + j) % len(words)] for j in range(330))
        answer = " ".join(words[(i * 3 + j) % len(words)] for j in range(140))
        rows.append({"messages": [{"role": "user", "content": f"Row {i}: {user}"}, {"role": "assistant", "content": answer}]})
    return rows


def part_train(res: dict, model_dir: Path, tmp: Path, steps: int) -> None:
    src = tmp / "train-src"
    src.mkdir(exist_ok=True)
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(64)))
    data = tmp / "train-data"
    cli = [sys.executable, "-m", "tinygpt.runtime.cli"]
    subprocess.run(cli + ["dataset", "import", str(src), "--model", str(model_dir), "--out", str(data)],
                   check=True, capture_output=True)
    common = ["--no-progress", "--steps", str(steps), "--batch-size", "8", "--num-layers", "-1", "--lora-rank", "8",
              "--lora-scale", "20", "--optimizer", "adam", "--learning-rate", "1e-5", "--lr-schedule", "constant",
              "--eval-every", "0", "--checkpoint-every", "0", "--report-every", "5", "--max-grad-norm", "0", "--no-pack"]
    out = {}
    for method in ("lora", "qlora"):
        dest = tmp / f"train-{method}"
        done = subprocess.run(cli + ["train", "--model", str(model_dir), "--data", str(data), "--out", str(dest),
                                     "--method", method, *common], capture_output=True, text=True)
        if done.returncode:
            out[method] = {"error": done.stderr[-2000:]}
            continue
        reports = [json.loads(x) for x in (dest / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in reports if r["kind"] == "train"]
        steady = train[1:] or train
        out[method] = {"steps_per_second": max(r["steps_per_second"] for r in steady),
                       "input_tokens_per_second": max(r["input_tokens_per_second"] for r in steady),
                       "peak_memory_gb": train[-1].get("peak_memory_gb")}
    done = subprocess.run([sys.executable, str(Path(__file__)), "--bare-lora", str(model_dir), str(data), str(steps)],
                          capture_output=True, text=True)
    out["bare_lora"] = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-2000:]}
    if "steps_per_second" in out.get("lora", {}) and "steps_per_second" in out["bare_lora"]:
        out["lora_ratio_bare"] = out["lora"]["steps_per_second"] / out["bare_lora"]["steps_per_second"]
    if "steps_per_second" in out.get("qlora", {}) and "steps_per_second" in out.get("lora", {}):
        out["qlora_ratio_lora"] = out["qlora"]["steps_per_second"] / out["lora"]["steps_per_second"]
    res.update(out)


def bare_lora(model_dir: str, data: str, steps: int) -> dict:
    """A compiled MLX LoRA step (rank 8, scale 20, every linear of every block, Adam) on the
    batches `tinygpt train` would draw from the same dataset (batch 8, same planner)."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    from tinygpt.workers.training.data import BatchPlan, check_rows, load_dataset
    from tinygpt.workers.training.losses import batch_arrays, cross_entropy

    from tinygpt.runtime import device

    model, _ = load(model_dir)
    device.cast_for_device(model, device.select())  # bf16 on a GPU, as `tinygpt train` does
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 8, "scale": 20.0, "dropout": 0.0})
    rows = check_rows(load_dataset(Path(data)).rows("train"), "train", 10**6)
    stream = BatchPlan(rows, 8, 2048, False, seed=0).stream()
    optimizer = optim.Adam(learning_rate=1e-5)
    loss_and_grad = nn.value_and_grad(model, cross_entropy)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*arrays):
        (loss, ntoks), grads = loss_and_grad(model, *arrays)
        optimizer.update(model, grads)
        return loss, ntoks

    times, tokens = [], 0
    for i in range(steps):
        arrays = batch_arrays(next(stream))
        t = time.perf_counter()
        loss, ntoks = step(*arrays)
        mx.eval(state, loss, ntoks)
        if i >= 3:
            times.append(time.perf_counter() - t)
            tokens += int(arrays[0].size)
    return {"steps_per_second": len(times) / sum(times), "input_tokens_per_second": tokens / sum(times),
            "median_step_s": statistics.median(times)}


def part_big(res: dict, small: dict, bandwidth: float) -> None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    config = {**json.loads(small["config"]), **BIG_SHAPE}
    model = build_model(config)
    nbytes = weight_bytes(model)
    rates = {b: max(bare_loop(model, b, 64) for _ in range(2)) for b in (1, 128)}
    prompt = mx.random.randint(0, 1000, (32,), key=mx.random.key(5))
    times = []
    for _ in generate_step(prompt, model, max_tokens=129):
        times.append(time.perf_counter())
    gen = 128 / (times[-1] - times[0])
    limit = bandwidth / nbytes
    res.update({"weight_bytes": nbytes, "bare_tok_s": rates, "mlx_lm_generate_step_tok_s": gen,
                "bandwidth_limit_tok_s": limit, "bare_batch1_share_of_limit": rates[1] / limit})
    del model
    mx.clear_cache()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-lora":
        print(json.dumps(bare_lora(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=25)
    parser.add_argument("--parts", default="hbm,runtime,train,big")
    args = parser.parse_args()

    import mlx.core as mx

    from tinygpt.runtime import device

    parts = args.parts.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="tinygpt-gpu-"))
    model_dir = tmp / "model"
    shutil.copytree(args.model_dir, model_dir)
    os.environ.setdefault("TINYGPT_HOME", str(tmp / "home"))
    result: dict = {"device": device.select().describe(), "mlx": mx.__version__, "device_info": {
        k: v for k, v in mx.device_info().items() if isinstance(v, (str, int, float))}}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))

    global checkpoint
    checkpoint = save

    def run(name: str, fn, *a) -> None:
        if name not in parts:
            return
        t = time.perf_counter()
        result[name] = {}
        try:
            fn(result[name], *a)
        except Exception:  # noqa: BLE001  (one part failing must not lose the others)
            result[name]["error"] = traceback.format_exc()[-3000:]
        result[name]["wall_s"] = time.perf_counter() - t
        print(f"[gpu_suite] {name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
        save()

    random_weights(model_dir)
    run("hbm", lambda r: r.update(hbm_bandwidth()))
    run("runtime", part_runtime, model_dir, tmp, args.tokens)
    bw = result.get("hbm", {}).get("gb_per_s", 0) * 1e9
    if "runtime" in result and "weight_bytes" in result["runtime"] and bw:
        rt = result["runtime"]
        limit = bw / rt["weight_bytes"]
        rt["bandwidth_limit_tok_s"] = limit
        if "single_stream" in rt:
            rt["single_stream"]["share_of_bandwidth_limit"] = rt["single_stream"]["runtime_tok_s"] / limit
            rt["bare_batch1_share_of_limit"] = rt["bare_tok_s"][1] / limit
    run("train", part_train, model_dir, tmp, args.train_steps)
    small = {"config": (model_dir / "config.json").read_text()}
    run("big", part_big, small, bw)
    save()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
