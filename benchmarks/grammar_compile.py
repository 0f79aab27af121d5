"""Grammar compile time and coverage over real-world function schemas (JSON, last line).

    python benchmarks/grammar_compile.py [--limit N] [--seed 0] [--sample K]

Corpus: benchmarks/data/bfcl_functions.jsonl.gz, the deduplicated function docs of the
Berkeley Function Calling Leaderboard (github.com/ShishirPatil/gorilla,
berkeley-function-call-leaderboard/bfcl_eval/data/*.json, BFCL types mapped to JSON
Schema as workers/evalgate/bfcl.py does), plus tests/data/schemas (62 schemas). Each schema is
compiled cold (wall and the thread's CPU time) as a named tool_choice (one call) on
SmolLM2's 49,152-token tokenizer
(`tinygpt models pull smollm2-135m-instruct`). `--limit N` takes a seeded random subset
(the regex compiler this replaced needed seconds per schema). `--sample K` draws K
outputs per accepted schema with random logits and validates the arguments with
`jsonschema`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import time
from pathlib import Path

import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx)

import numpy as np

from tinygpt.runtime.grammar import GrammarError, TokenizerInfo, build_constraint

ROOT = Path(__file__).resolve().parents[1]
BFCL = ROOT / "benchmarks" / "data" / "bfcl_functions.jsonl.gz"
CORPUS = ROOT / "tests" / "data" / "schemas"


def load_tools() -> list[tuple[str, dict]]:
    """(source, OpenAI tool) for every BFCL function and every tests/data/schemas entry."""
    rows = []
    with gzip.open(BFCL, "rt") as f:
        for line in f:
            row = json.loads(line)
            rows.append((row["source"], {"type": "function", "function": row["function"]}))
    for path in sorted(CORPUS.glob("*.json")):
        rows.append(("tests/data/schemas", json.loads(path.read_text())))
    return rows


def smollm2_info() -> TokenizerInfo:
    from transformers import AutoTokenizer

    from tinygpt.runtime.paths import models_dir

    folder = models_dir() / "smollm2-135m-instruct"
    if not (folder / "tokenizer.json").exists():
        raise SystemExit("SmolLM2 is not in the models cache: run `tinygpt models pull smollm2-135m-instruct`")
    config = json.loads((folder / "config.json").read_text())
    return TokenizerInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(folder)), vocab_size=config.get("vocab_size"))


_CLOSERS = {b'"': 0, b"}": 1, b"]": 2}


def sample_valid(info: TokenizerInfo, request: dict, schema: dict, seeds: int) -> tuple[int, int, int]:
    """(valid, finished, drawn): outputs drawn with random choices among the allowed tokens
    (after 150 tokens heading for the end: EOS, closers, short tokens, half the time) whose
    arguments validate; an output not finished in 2,000 tokens is not counted either way."""
    import jsonschema

    from tinygpt.runtime.grammar import parse_tool_calls

    valid = finished = 0
    eos = set(info.eos_token_ids)
    rank = {b: i for i, b in enumerate(_CLOSERS)}
    closers = sorted((t for t, b in enumerate(info.token_bytes) if b in rank), key=lambda t: rank[info.token_bytes[t]])
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        constraint = build_constraint(info, **request)
        pieces, ended = [], False
        for step in range(2000):
            allowed = np.flatnonzero(constraint.allowed())
            ends = [t for t in allowed if t in eos]
            if ends and (step >= 150 or rng.random() < 0.3):
                ended = True
                break
            if step >= 150 and rng.random() < 0.5:
                mask = constraint.allowed()
                closing = [t for t in closers if mask[t]]
                # Else the shortest of a random few of the allowed tokens (there can be 49k).
                few = rng.choice(allowed, size=min(64, allowed.size), replace=False)
                token = closing[0] if closing else int(min(few, key=lambda t: (len(info.token_bytes[t] or b""), rng.random())))
            else:
                token = int(rng.choice(allowed))
            if token in eos:
                ended = True
                break
            constraint.advance(token)
            pieces.append(info.token_bytes[token])
        if not ended:
            continue
        finished += 1
        calls = parse_tool_calls(b"".join(pieces).decode("utf-8", "replace"))
        if len(calls) == 1:
            try:
                jsonschema.validate(json.loads(calls[0].arguments_json), schema)
                valid += 1
            except jsonschema.ValidationError:
                pass
    return valid, finished, seeds


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1e3, q)), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="a seeded random subset of this many schemas (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=0, help="outputs drawn and validated per accepted schema")
    args = parser.parse_args(argv)

    info = smollm2_info()
    if hasattr(info, "ll_tokenizer"):
        info.ll_tokenizer()  # once per tokenizer, at model load (warm_up): not a grammar's cost
    tools = load_tools()
    if args.limit:
        tools = random.Random(args.seed).sample(tools, min(args.limit, len(tools)))
    times, cpu_times, refused, reasons, slowest = [], [], 0, {}, []
    valid = finished = drawn = 0
    for _source, tool in tools:
        name = tool["function"]["name"]
        request = dict(tools=[tool], tool_choice={"type": "function", "function": {"name": name}}, parallel_tool_calls=False)
        started, started_cpu = time.perf_counter(), time.thread_time()
        try:
            build_constraint(info, **request)
        except GrammarError as exc:
            refused += 1
            reason = str(exc).split(":", 1)[-1].strip()[:80]
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        finally:
            elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
        times.append(elapsed)
        cpu_times.append(elapsed_cpu)
        slowest = sorted(slowest + [(round(elapsed * 1e3, 2), name)], reverse=True)[:5]
        if args.sample:
            v, f, d = sample_valid(info, request, tool["function"].get("parameters") or {}, args.sample)
            valid, finished, drawn = valid + v, finished + f, drawn + d
    report = {
        "vocabulary": info.vocab_size,
        "schemas": len(tools),
        "accepted": len(times),
        "refused": refused,
        "refusals": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10]),
        "compile_ms": {"p50": pct(times, 50), "p99": pct(times, 99), "max": round(max(times) * 1e3, 3), "total_s": round(sum(times), 2)},
        # The calling thread's CPU time: the compile's own cost without this shared
        # machine's scheduling (the wall time's tail is other processes).
        "compile_cpu_ms": {"p50": pct(cpu_times, 50), "p99": pct(cpu_times, 99), "max": round(max(cpu_times) * 1e3, 3)},
        "slowest_ms": slowest,
        "sampled": {"drawn": drawn, "finished": finished, "valid": valid,
                    "share_valid": round(valid / finished, 4) if finished else None},
        "load_average": list(os.getloadavg()),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
