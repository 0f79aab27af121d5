"""Grammar-constrained decoding cost: per-token mask time and index compile time (JSON).

    python benchmarks/grammar_masks.py [--tokens 1500] [--vocab smollm2|synthetic]

Vocabulary: SmolLM2's 49,152-token tokenizer when `tinygpt models pull
smollm2-135m-instruct` has put it in the models cache, else a synthetic byte-level
vocabulary of the same size (seeded; text-like pieces plus all 256 bytes).

Mask time is one call of the constraint as mlx-lm's logits processor (advance by the
last token, build the mask, apply it to (1, V) logits), as wall time and as the calling
thread's CPU time (the wall time's tail on a shared machine is mostly other processes);
"with eval" adds evaluating the masked logits, which in a real decode step is fused
into the sampling graph. Tokens are drawn uniformly from the allowed set, a harsher walk
than a model's (it wanders into long strings and every branch). "bitmask" is llguidance's
own mask computation alone (the matcher filling the int32 bitmask). Goal: p99 < 0.1 ms.

Compile time is cold (schema -> Lark -> llguidance matcher) and cached (a repeated tool
set: a lookup and a matcher copy) for every schema of tests/data/schemas, each as a named
tool_choice; benchmarks/grammar_compile.py does the same over 3,400 BFCL schemas.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx)

import mlx.core as mx
import numpy as np

from tinygpt.runtime.grammar import TokenizerInfo, build_constraint, grammar_cache

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "schemas"
VOCAB_SIZE = 49152


def smollm2_info() -> TokenizerInfo | None:
    """SmolLM2's tokenizer from the models cache, if it has been pulled."""
    from tinygpt.runtime.paths import models_dir

    folder = models_dir() / "smollm2-135m-instruct"
    if not (folder / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return TokenizerInfo.from_tokenizer(tokenizer, vocab_size=config.get("vocab_size"))


def synthetic_info(size: int = VOCAB_SIZE, seed: int = 0) -> TokenizerInfo:
    """A byte-level-like vocabulary: every byte, then text-like pieces; last id is EOS."""
    rng = np.random.default_rng(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = np.array([12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2, 1.9, 1.5, 1, 0.8, 0.2, 0.2, 0.1, 0.1])
    weights /= weights.sum()
    pieces: list[bytes] = [bytes([b]) for b in range(256)]
    seen = set(pieces)
    extras = ['"', '",', '":', '": "', '", "', "{", "}", "[", "]", ", ", "\n", "  ", "true", "false", "null", "<", ">", "</", "_"]
    for text in extras:
        if text.encode() not in seen:
            seen.add(text.encode())
            pieces.append(text.encode())
    while len(pieces) < size - 1:
        n = int(rng.integers(2, 10))
        word = "".join(rng.choice(list(letters), size=n, p=weights))
        roll = rng.random()
        if roll < 0.45:
            word = " " + word
        elif roll < 0.5:
            word = word.capitalize()
        elif roll < 0.55:
            word = str(int(rng.integers(0, 1000)))
        elif roll < 0.58:
            word = word + rng.choice(['"', ",", ".", ":", '",', '":'])
        elif roll < 0.6:
            accents = "éüßçñ€中文"
            word = " " + accents[int(rng.integers(0, len(accents)))] + word
        piece = word.encode()
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    return TokenizerInfo(vocab_size=size, eos_token_ids=(size - 1,), token_bytes=tuple(pieces) + (None,), mode="synthetic")


def load_corpus() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.json"))]


def percentiles(values_s: list[float]) -> dict:
    us = np.array(values_s) * 1e6
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1), "n": len(us)}


def mask_times(info: TokenizerInfo, label: str, request: dict, tokens: int, seed: int = 0) -> dict:
    """Walk the grammar with uniformly random allowed tokens, timing each processor call."""
    rng = np.random.default_rng(seed)
    logits = mx.random.normal((1, info.vocab_size), key=mx.random.key(seed))
    mx.eval(logits)
    masks, cpu, with_eval, bitmask = [], [], [], []
    started = time.perf_counter()
    constraint, previous = build_constraint(info, **request), mx.array([0])
    compile_s = time.perf_counter() - started
    outputs = 0
    while len(masks) < tokens:
        started, started_cpu = time.perf_counter(), time.thread_time()
        masked = constraint(previous, logits)
        built, built_cpu = time.perf_counter(), time.thread_time()
        mx.eval(masked)
        done = time.perf_counter()
        masks.append(built - started)
        cpu.append(built_cpu - started_cpu)
        with_eval.append(done - started)
        constraint._mask = None  # time the matcher's own bitmask computation alone
        started = time.perf_counter()
        constraint._bitmask()
        bitmask.append(time.perf_counter() - started)
        allowed = np.flatnonzero(constraint.allowed())
        token = int(rng.choice(allowed))
        if token in info.eos_token_ids:
            outputs += 1
            constraint, previous = build_constraint(info, **request), mx.array([0])
        else:
            previous = mx.array([token])
    return {
        "grammar": label,
        "compile_cold_s": round(compile_s, 3),
        "mask": percentiles(masks),
        "mask_cpu": percentiles(cpu),
        "mask_with_eval": percentiles(with_eval),
        "bitmask": percentiles(bitmask),
        "outputs_completed": outputs,
    }


def compile_times(info: TokenizerInfo, tools: list[dict]) -> dict:
    """Cold and cached build_constraint time per corpus schema (named tool_choice)."""
    rows = []
    from tinygpt.runtime.grammar import GrammarError

    for tool in tools:
        name = tool["function"]["name"]
        request = dict(tools=[tool], tool_choice={"type": "function", "function": {"name": name}}, parallel_tool_calls=False)
        started = time.perf_counter()
        try:
            constraint = build_constraint(info, **request)
        except GrammarError:
            continue  # refused (uniqueItems): grammar_compile.py counts refusals
        cold = time.perf_counter() - started
        started = time.perf_counter()
        again = build_constraint(info, **request)
        cached = time.perf_counter() - started
        assert again.grammar is constraint.grammar
        rows.append(
            {
                "schema": name,
                "cold_s": round(cold, 4),
                "matcher_s": round(constraint.grammar.compile_seconds, 4),
                "cached_ms": round(cached * 1e3, 3),
            }
        )
    colds = [r["cold_s"] for r in rows]
    cached = [r["cached_ms"] for r in rows]
    return {
        "schemas": len(rows),
        "cold_s": {"p50": round(statistics.median(colds), 3), "max": round(max(colds), 3), "total": round(sum(colds), 2)},
        "cached_ms": {"p50": round(statistics.median(cached), 3), "max": round(max(cached), 3)},
        "per_schema": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1500, help="processor calls timed per grammar")
    parser.add_argument("--vocab", choices=["auto", "smollm2", "synthetic"], default="auto")
    args = parser.parse_args(argv)

    info = None if args.vocab == "synthetic" else smollm2_info()
    if info is None and args.vocab == "smollm2":
        parser.error("SmolLM2 is not in the models cache: run `tinygpt models pull smollm2-135m-instruct`")
    source = "smollm2-135m-instruct" if info is not None else "synthetic"
    info = info or synthetic_info()
    tools = load_corpus()
    grammar_cache.clear()
    info.ll_tokenizer()  # built once per tokenizer at model load (warm_up), not per grammar

    compile_report = compile_times(info, tools)

    by_name = {t["function"]["name"]: t for t in tools}
    agent = [by_name[n] for n in ("get_current_weather", "search_web", "send_email", "create_calendar_event", "read_file")]
    grammars = {
        "tools_required_5": dict(tools=agent, tool_choice="required"),
        "tools_auto_5": dict(tools=agent, tool_choice="auto"),
        "create_invoice_named": dict(tools=[by_name["create_invoice"]], tool_choice={"type": "function", "function": {"name": "create_invoice"}}),
        "json_object": dict(response_format={"type": "json_object"}),
    }
    masks = [mask_times(info, label, request, args.tokens) for label, request in grammars.items()]
    report = {
        "vocabulary": {"source": source, "size": info.vocab_size},
        "mlx": {"version": mx.__version__, "metal": bool(mx.metal.is_available())},
        "mask": masks,
        "mask_p99_us_max": max(m["mask"]["p99_us"] for m in masks),
        "mask_cpu_p99_us_max": max(m["mask_cpu"]["p99_us"] for m in masks),
        "bitmask_p99_us_max": max(m["bitmask"]["p99_us"] for m in masks),
        "load_average": list(os.getloadavg()),
        "compile": compile_report,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
