"""The method table: SFT on successes vs KTO vs DPO vs KTO + SFT, on the same recorded attempts.

    python benchmarks/preference_methods.py [--model smollm2-135m-instruct] [--train 24] [--heldout 16] [--steps 6]

The task is `train_tool_specialist.py`'s (get_weather / convert_currency, both tools in
the prompt), in a variant with failures: every training request was attempted twice,
and each attempt succeeded or failed at random (seeded, p = 0.5). A failure is one of
the mistakes the base model makes on this task under the grammar (see RESULTS.md):
a currency code not copied from the request ("USD" instead), from / to swapped, the
wrong unit, the wrong tool. So the same data holds what each method needs:

- lora (SFT on successes): the successful attempts, once per request;
- kto: successes as desirable rows, failures as undesirable rows (`"label": false`);
- dpo: a pair for each request with one success and one failure;
- kto-sft: KTO plus a cross-entropy term on the successes.

Held-out: requests whose cities and currency codes never appear in training. A request
counts when greedy decoding reproduces the right call exactly (name, arguments, end of
turn): checked teacher-forced (every answer token is the model's argmax after the
prompt and the answer so far), which is what greedy generation would emit, at the cost
of one forward pass. Wall time is each `tinygpt train` command's, end to end (model
load, reference log-probs, steps). The last line is JSON. Runs on CPU or, with
`mlx[cuda]`, a GPU: raise `--steps`, `--train` and `--heldout` there.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tool_specialist import TEST_CITIES, TEST_CURRENCIES, TOOLS, TRAIN_CITIES, TRAIN_CURRENCIES, make_records  # noqa: E402

METHODS = ("lora", "kto", "dpo", "kto-sft")


def _assistant(call: dict) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}


def corrupt(call: dict, currencies: list[str], rng: random.Random) -> dict:
    """One of the base model's mistakes on this task, applied to the right call."""
    args = dict(call["arguments"])
    if call["name"] == "convert_currency":
        kind = rng.choice(["usd", "swap", "tool"])
        if kind == "usd":  # fills in a familiar code instead of copying the request's
            key = rng.choice(["from", "to"])
            args[key] = "USD" if args[key] != "USD" else "EUR"
        elif kind == "swap":
            args["from"], args["to"] = args["to"], args["from"]
        else:
            return {"name": "get_weather", "arguments": {"city": args["to"], "unit": "celsius"}}
    else:
        kind = rng.choice(["unit", "city", "tool"])
        if kind == "unit":
            args["unit"] = "celsius" if args["unit"] == "fahrenheit" else "fahrenheit"
        elif kind == "city":
            args["city"] = rng.choice([c for c in TRAIN_CITIES if c != args["city"]])
        else:
            return {"name": "convert_currency", "arguments": {"amount": 100, "from": "USD", "to": rng.choice(currencies)}}
    return {"name": call["name"], "arguments": args}


def attempts(n: int, cities, currencies, seed: int) -> list[dict]:
    """JSONL records of two recorded attempts per request: successes, failures, pairs."""
    rng = random.Random(seed + 100)
    out = []
    for rec in make_records(n, cities, currencies, seed):
        user, good = rec["messages"][0], rec["messages"][1]["tool_calls"][0]["function"]
        answers = [good if rng.random() < 0.5 else corrupt(good, currencies, rng) for _ in range(2)]
        seen = []
        for call in answers:
            if call in seen:  # dedupe keeps one copy of an identical answer
                continue
            seen.append(call)
            line = {"messages": [user, _assistant(call)], "tools": TOOLS}
            out.append(line if call == good else {**line, "label": False})
        if good in answers and any(a != good for a in answers):
            bad = next(a for a in answers if a != good)
            out.append({"messages": [user], "tools": TOOLS, "chosen": _assistant(good), "rejected": _assistant(bad)})
    return out


def greedy_exact(model_dir: str, adapter: str | None, records: list[dict], batch: int = 8) -> list[float]:
    """Per held-out record: 1.0 when every answer token is the argmax (greedy would emit the call)."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load

    from tinygpt.workers.training.importer import ImportStats, chat_row

    model, tokenizer = load(model_dir, adapter_path=adapter)
    model.eval()
    rows = [chat_row(tokenizer, r["messages"], TOOLS, ImportStats()) for r in records]
    scores = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        length = max(len(ids) for ids, _ in chunk) - 1
        inputs = np.zeros((len(chunk), length), np.int32)
        for b, (ids, _) in enumerate(chunk):
            inputs[b, : len(ids) - 1] = ids[:-1]
        picked = np.array(mx.argmax(model(mx.array(inputs)), axis=-1))
        for b, (ids, mask) in enumerate(chunk):
            at = [t for t in range(len(ids) - 1) if mask[t + 1]]
            scores.append(float(all(picked[b, t] == ids[t + 1] for t in at)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tinygpt-preference-methods"))
    parser.add_argument("--train", type=int, default=24, help="training requests (two recorded attempts each)")
    parser.add_argument("--heldout", type=int, default=16, help="held-out requests (unseen cities and currencies)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", default="5e-4")
    parser.add_argument("--num-layers", default="8", help="adapt the last N blocks (-1: all)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-base", action="store_true", help="skip scoring the base model (known from an earlier run)")
    parser.add_argument("--hp", action="append", default=[], metavar="METHOD:KEY=VALUE", help="an extra option for one method")
    args = parser.parse_args()

    from tinygpt.runtime.models import resolve_model
    from tinygpt.workers.evalgate.stats import compare

    model_dir = str(resolve_model(args.model))
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.work / f"src-{args.train}"
    src.mkdir(exist_ok=True)
    for split, n, seed in (("train", args.train, 0), ("valid", max(8, args.train // 6), 1)):
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in attempts(n, TRAIN_CITIES, TRAIN_CURRENCIES, seed)))
    heldout = make_records(args.heldout, TEST_CITIES, TEST_CURRENCIES, 2)

    tinygpt = [sys.executable, "-m", "tinygpt.runtime.cli"]
    data = args.work / f"dataset-{args.train}"
    if not (data / "manifest.json").exists():
        cmd = [*tinygpt, "dataset", "import", str(src), "--model", args.model, "--out", str(data)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    counts = {k: 0 for k in ("successes", "failures", "pairs")}
    for line in (src / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        counts["pairs" if "chosen" in r else "failures" if r.get("label") is False else "successes"] += 1
    print("training data:", counts, flush=True)

    extra: dict[str, list[str]] = {}
    for item in args.hp:
        method, _, option = item.partition(":")
        key, _, value = option.partition("=")
        extra.setdefault(method, []).extend([f"--{key.replace('_', '-')}", value])

    results, items = {}, {}
    if not args.no_base:
        items["base"] = greedy_exact(model_dir, None, heldout)
        print(f"base: {sum(items['base'])}/{len(heldout)}", flush=True)
    for method in args.methods.split(","):
        out = args.work / f"{method}-{args.train}-{args.steps}"
        cmd = [*tinygpt, "train", "--model", args.model, "--data", str(data), "--out", str(out), "--method", method,
               "--no-progress", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--learning-rate", args.learning_rate, "--warmup-steps", "2", "--eval-every", str(args.steps),
               "--report-every", "5", "--checkpoint-every", "5", "--val-batches", "2",
               "--num-layers", args.num_layers, *extra.get(method, [])]
        print("$", " ".join(cmd), flush=True)
        started = time.time()
        subprocess.run(cmd, check=True)
        record = json.loads((out / "training_record.json").read_text())
        wall = record.get("duration_s") or time.time() - started
        items[method] = greedy_exact(model_dir, str(out), heldout)
        results[method] = {"success": sum(items[method]) / len(heldout), "train_seconds": wall,
                           "steps": record["steps_done"], "peak_memory_gb": record["metrics"].get("peak_memory_gb")}
        print(f"{method}: {sum(items[method])}/{len(heldout)} in {wall:.0f} s", flush=True)

    ids = [str(i) for i in range(len(heldout))]
    print(f"\n| method | held-out success (n={len(heldout)}) | vs SFT (paired p) | train wall time |")
    print("|---|---:|---:|---:|")
    if "base" in items:
        print(f"| base | {sum(items['base']) / len(heldout):.1%} | | |")
    for method, r in results.items():
        vs = ""
        if method != "lora" and "lora" in items:
            cmp = compare(dict(zip(ids, items[method])), dict(zip(ids, items["lora"])))
            r["vs_sft"] = {"delta": cmp.delta, "p_value": cmp.p_value}
            vs = f"{cmp.delta:+.1%} (p={cmp.p_value:.2g})" if cmp.p_value is not None else f"{cmp.delta:+.1%}"
        print(f"| {method} | {r['success']:.1%} | {vs} | {r['train_seconds'] / 60:.1f} min |")
    print(json.dumps({"benchmark": "preference_methods", "model": args.model, "train_requests": args.train,
                      "data": counts, "heldout": len(heldout), "steps": args.steps,
                      "base_success": sum(items["base"]) / len(heldout) if "base" in items else None,
                      "methods": results}))


if __name__ == "__main__":
    main()
