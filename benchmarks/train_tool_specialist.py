"""The real-model proof: a LoRA specialist beats its base on a held-out tool-calling task.

    python benchmarks/train_tool_specialist.py [--model smollm2-135m-instruct] [--train 300] [--steps 40]

Builds a two-tool task (get_weather / convert_currency, many phrasings), imports it with
`tinygpt dataset import`, trains with `tinygpt train` (the exact commands are printed),
then scores base and specialist on held-out prompts whose cities and currency codes never
appear in training: a prompt counts when the greedy answer holds exactly one tool call
with the right name and arguments. Then the same prompts go through `tinygpt eval-gate`
(the runtime, grammar-constrained with tool_choice=required): there the base model always
emits a valid call, so only the choice of function and arguments separates the two.
CPU-only and deterministic (seeded data and training).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money between currencies.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from": {"type": "string", "description": "ISO code"},
                    "to": {"type": "string", "description": "ISO code"},
                },
                "required": ["amount", "from", "to"],
            },
        },
    },
]

TRAIN_CITIES = ["Paris", "Berlin", "London", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo",
                "Athens", "Warsaw", "Budapest", "Zurich", "Brussels", "Amsterdam", "Stockholm", "Helsinki"]
TEST_CITIES = ["Tokyo", "Chicago", "Nairobi", "Lima", "Toronto", "Seoul", "Cairo", "Denver", "Sydney", "Mumbai"]
# Currencies by ISO code: held-out codes must be copied from the request, not recalled
# (mapping "rupees" to INR is world knowledge a 135M model may lack, not tool use).
TRAIN_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD"]
TEST_CURRENCIES = ["INR", "MXN", "KRW", "SEK", "BRL"]

WEATHER = [
    ("What's the weather like in {city}?", "celsius"),
    ("How warm is it in {city} right now?", "celsius"),
    ("Tell me the temperature in {city} in celsius.", "celsius"),
    ("Is it raining in {city} today?", "celsius"),
    ("What's the weather in {city}? Give it in fahrenheit.", "fahrenheit"),
    ("How hot is it in {city} in degrees fahrenheit?", "fahrenheit"),
    ("I'm flying to {city} tomorrow, what is the weather there (fahrenheit please)?", "fahrenheit"),
]
CURRENCY = [
    "Convert {amount} {src} to {dst}.",
    "How much is {amount} {src} in {dst}?",
    "I have {amount} {src}. What is that in {dst}?",
    "Please change {amount} {src} into {dst}.",
]


def make_records(n: int, cities, currencies, seed: int) -> list[dict]:
    """`n` chat records with the tool list and the one correct call as the answer."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        if rng.random() < 0.5:
            text, unit = rng.choice(WEATHER)
            city = rng.choice(cities)
            ask, call = text.format(city=city), {"name": "get_weather", "arguments": {"city": city, "unit": unit}}
        else:
            src, dst = rng.sample(currencies, 2)
            amount = rng.choice([5, 20, 50, 75, 100, 250, 1000, 1200])
            ask = rng.choice(CURRENCY).format(amount=amount, src=src, dst=dst)
            call = {"name": "convert_currency", "arguments": {"amount": amount, "from": src, "to": dst}}
        records.append(
            {
                "messages": [
                    {"role": "user", "content": ask},
                    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
                ],
                "tools": TOOLS,
            }
        )
    return records


_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_call(text: str) -> dict | None:
    calls = _CALL.findall(text)
    if len(calls) != 1:
        return None
    try:
        call = json.loads(calls[0])
    except json.JSONDecodeError:
        return None
    return call if isinstance(call, dict) else None


def accuracy(model_dir: str, adapter: str | None, records: list[dict], max_tokens: int = 64) -> tuple[float, list[str]]:
    """Share of records whose greedy answer is exactly the expected call (name and arguments)."""
    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx loads)
    from mlx_lm import generate, load

    model, tokenizer = load(model_dir, adapter_path=adapter)
    hits, samples = 0, []
    for record in records:
        prompt = tokenizer.apply_chat_template(record["messages"][:1], tools=TOOLS, add_generation_prompt=True)
        answer = generate(model, tokenizer, prompt, max_tokens=max_tokens)
        want = record["messages"][1]["tool_calls"][0]["function"]
        got = parse_call(answer)
        ok = got is not None and got.get("name") == want["name"] and got.get("arguments") == want["arguments"]
        hits += ok
        if len(samples) < 3:
            samples.append(f"{'ok ' if ok else 'BAD'} {record['messages'][0]['content']!r} -> {answer.strip()!r}")
    return hits / len(records), samples


def constrained_gate(tinygpt: list[str], model_dir: str, adapter: Path, records: list[dict], work: Path) -> dict:
    """Base and specialist on the same held-out prompts through the product's eval gate:
    the runtime with `tool_choice: required`, so both always emit a schema-valid call and
    only choosing the right function and arguments counts (BFCL-style scoring)."""
    work.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"t{i}", "prompt": r["messages"][0]["content"], "tools": TOOLS, "tool_choice": "required",
         "parallel_tool_calls": False, "max_tokens": 64,
         "expected": [{"name": c["function"]["name"], "arguments": {k: [v] for k, v in c["function"]["arguments"].items()}}
                      for c in r["messages"][1]["tool_calls"]]}
        for i, r in enumerate(records)
    ]
    (work / "held-out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = {"name": "held-out", "kind": "tool_call", "data": "held-out.jsonl", "threshold": 0.0}
    project = {"name": "tool-specialist", "base_model": model_dir, "eval_suites": [suite], "gate": {"baseline": "base"}}
    (work / "tinygpt.project.json").write_text(json.dumps(project))
    cmd = [*tinygpt, "eval-gate", "--project", str(work / "tinygpt.project.json"), "--candidate", str(adapter),
           "--specialist", "tools", "--no-cache", "--quiet", "--out", str(work / "gate-result.json")]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd)
    if done.returncode not in (0, 1):
        raise SystemExit(f"eval-gate failed with exit code {done.returncode}")
    result = json.loads((work / "gate-result.json").read_text())
    return {"verdict": result["verdict"], "base": result["baseline"]["suites"][0]["mean"],
            "specialist": result["candidate"]["suites"][0]["mean"]}


def sh(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tinygpt-tool-specialist"))
    parser.add_argument("--train", type=int, default=300, help="training examples")
    parser.add_argument("--test", type=int, default=60, help="held-out examples (unseen cities and currencies)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--learning-rate", default="1e-4")
    args = parser.parse_args()

    from tinygpt.runtime.models import resolve_model

    model_dir = str(resolve_model(args.model))
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.work / "src"
    src.mkdir(exist_ok=True)
    for split, n, cities, currencies, seed in (
        ("train", args.train, TRAIN_CITIES, TRAIN_CURRENCIES, 0),
        ("valid", max(8, args.train // 8), TRAIN_CITIES, TRAIN_CURRENCIES, 1),
    ):
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records(n, cities, currencies, seed)))
    test = make_records(args.test, TEST_CITIES, TEST_CURRENCIES, 2)

    tinygpt = [sys.executable, "-m", "tinygpt.runtime.cli"]
    data, out = args.work / "dataset", args.work / f"adapter-{args.steps}"
    if not (data / "manifest.json").exists():
        sh([*tinygpt, "dataset", "import", str(src), "--model", args.model, "--out", str(data)])
    started = time.time()
    sh([*tinygpt, "train", "--model", args.model, "--data", str(data), "--out", str(out), "--no-progress",
        "--steps", str(args.steps), "--batch-size", "4", "--learning-rate", args.learning_rate, "--warmup-steps", "10",
        "--eval-every", "10", "--report-every", "5", "--checkpoint-every", "10"])
    record = json.loads((out / "training_record.json").read_text())
    # A rerun with the same settings reuses the finished adapter: report its own training time.
    train_s = record.get("duration_s") or time.time() - started

    base_acc, base_samples = accuracy(model_dir, None, test)
    spec_acc, spec_samples = accuracy(model_dir, str(out), test)
    gated = constrained_gate(tinygpt, model_dir, out, test, args.work / f"gate-{args.steps}")
    print("\nbase samples:", *base_samples, sep="\n  ")
    print("specialist samples:", *spec_samples, sep="\n  ")
    m = record["metrics"]
    print(f"\n| model | held-out exact tool-call accuracy (n={len(test)}) |")
    print("|---|---:|")
    print(f"| {args.model} (base) | {base_acc:.1%} |")
    print(f"| + LoRA specialist ({args.steps} steps, {args.train} examples) | {spec_acc:.1%} |")
    print(f"\nconstrained (runtime, tool_choice=required, eval gate): base {gated['base']:.1%} -> "
          f"specialist {gated['specialist']:.1%} ({gated['verdict']})")
    print(
        f"\nval loss {m['initial_val_loss']:.3f} -> {m['val_loss']:.3f} (best step {record['best_step']}); "
        f"train {train_s / 60:.1f} min, {m['tokens_per_second']:.0f} trained tok/s, peak {m['peak_memory_gb']:.2f} GB"
    )
    print(json.dumps({"benchmark": "train_tool_specialist", "model": args.model, "train_examples": args.train,
                      "held_out": len(test), "steps": args.steps, "base_accuracy": base_acc, "specialist_accuracy": spec_acc,
                      "constrained": gated,
                      "ratio": spec_acc / base_acc if base_acc else None, "val_loss": [m["initial_val_loss"], m["val_loss"]],
                      "train_seconds": train_s}))


if __name__ == "__main__":
    main()
