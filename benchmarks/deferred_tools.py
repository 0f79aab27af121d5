"""Deferred vs full tool mode on the default model, BFCL requests of >= 5 tools (JSON, last line).

    python benchmarks/deferred_tools.py [--model smollm2-135m-instruct] [--n 20]
    python benchmarks/deferred_tools.py --bfcl DIR --write-sample   # rebuild the sample

Two sets, `--n` requests each, from `benchmarks/data/bfcl_deferred_sample.jsonl.gz` (drawn
with a fixed seed from BFCL v4's `multiple` and `live_multiple` question + possible-answer
files; `--bfcl DIR` points at those files to draw it again):
  multiple+8   BFCL `multiple` (2-4 functions each), padded to 8 tools with distractors
               from benchmarks/data/bfcl_functions.jsonl.gz (other BFCL functions);
  live_multiple  BFCL `live_multiple` rows that offer 5-12 functions.
Each request runs in both modes, back to back on one in-process runtime (greedy,
tool_choice "required", parallel_tool_calls off, as BFCL's `multiple` asks for one call):
AST accuracy (workers/evalgate/scorers.check_tool_calls, BFCL's possible answers), prompt
tokens (usage), schema tokens fed after the chosen name (deferred: Step.inserted) and the
time to the complete call (request to response, sequential requests).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SAMPLE = ROOT / "data" / "bfcl_deferred_sample.jsonl.gz"
FUNCTIONS = ROOT / "data" / "bfcl_functions.jsonl.gz"
PAD_TO = 8
LIVE_TOOLS = (5, 12)
PER_SET = 40  # rows kept per set in the sample file


def write_sample(bfcl: Path) -> None:
    """Draw the sample from BFCL's files (seeded) and write it as JSON Lines (gzip)."""
    from tinygpt.workers.evalgate.bfcl import load_bfcl, tool_name

    rng = random.Random(16)
    with gzip.open(FUNCTIONS, "rt") as f:
        pool = [json.loads(line)["function"] for line in f]
    rows = []
    multiple = load_bfcl(bfcl / "BFCL_v4_multiple.json")
    for item in rng.sample(multiple, PER_SET):
        row = item.row
        names = {t["function"]["name"] for t in row.tools}
        tools = list(row.tools)
        while len(tools) < PAD_TO:
            f = rng.choice(pool)
            name = tool_name(f["name"])
            if name not in names and f.get("parameters", {}).get("type") == "object":
                names.add(name)
                tools.append({"type": "function", "function": {**f, "name": name}})
        rng.shuffle(tools)
        rows.append({"set": "multiple+8", "id": row.id, "messages": row.messages, "tools": tools, "expected": row.expected})
    live = [i for i in load_bfcl(bfcl / "BFCL_v4_live_multiple.json") if LIVE_TOOLS[0] <= len(i.row.tools) <= LIVE_TOOLS[1]]
    for item in rng.sample(live, PER_SET):
        row = item.row
        rows.append({"set": "live_multiple", "id": row.id, "messages": row.messages, "tools": row.tools, "expected": row.expected})
    with gzip.open(SAMPLE, "wt") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {SAMPLE}", file=sys.stderr)


def load_sample() -> list[dict]:
    with gzip.open(SAMPLE, "rt") as f:
        return [json.loads(line) for line in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=20, help="requests per set (default: 20)")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--bfcl", type=Path, help="BFCL data directory (BFCL_v4_multiple.json, possible_answer/...)")
    ap.add_argument("--write-sample", action="store_true", help="draw the sample from --bfcl and exit")
    args = ap.parse_args()
    if args.write_sample:
        write_sample(args.bfcl)
        return

    import openai

    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx)
    from tinygpt.runtime.contracts.io import read_any
    from tinygpt.runtime.contracts.trajectory import Trajectory
    from tinygpt.runtime.serving.config import ServerConfig
    from tinygpt.runtime.stack import start_runtime
    from tinygpt.workers.evalgate.rows import Call, Output
    from tinygpt.workers.evalgate.scorers import check_tool_calls

    rows = load_sample()
    sets = {}
    for r in rows:
        sets.setdefault(r["set"], [])
        if len(sets[r["set"]]) < args.n:
            sets[r["set"]].append(r)
    tmp = Path(tempfile.mkdtemp(prefix="deferred-bench-"))
    started = time.perf_counter()
    rt = start_runtime(ServerConfig(model=args.model, port=0, trajectories_dir=str(tmp / "traj"), max_tokens=args.max_tokens,
                                    session_idle_s=3600))
    client = openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0, timeout=900)
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        for name, chosen in sets.items():
            for r in chosen:
                for mode in ("full", "deferred"):
                    t0 = time.perf_counter()
                    raw = client.chat.completions.with_raw_response.create(
                        model="base", messages=r["messages"], tools=r["tools"], tool_choice="required",
                        parallel_tool_calls=False, temperature=0.0, max_tokens=args.max_tokens,
                        extra_headers={"X-TinyGPT-Tool-Mode": mode},
                    )
                    wall = time.perf_counter() - t0
                    resp = raw.parse()
                    msg = resp.choices[0].message
                    out = Output(content=msg.content, calls=[Call(c.function.name, c.function.arguments) for c in msg.tool_calls or []],
                                 finish_reason=resp.choices[0].finish_reason)
                    score, why = check_tool_calls(out, r["expected"], r["tools"])
                    rt.recorder.flush().result()
                    tid, index = raw.headers["X-TinyGPT-Trajectory"], int(raw.headers["X-TinyGPT-Step"])
                    step = read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory).steps[index]
                    results.setdefault(name, {}).setdefault(mode, []).append(dict(
                        id=r["id"], tools=len(r["tools"]), correct=score, why=why, prompt_tokens=resp.usage.prompt_tokens,
                        cached_tokens=resp.usage.prompt_tokens_details.cached_tokens, schema_tokens=len(step.inserted),
                        completion_tokens=resp.usage.completion_tokens, seconds=wall,
                        calls=[(c.name, c.arguments) for c in out.calls],
                    ))
                    print(f"{name} {r['id']} {mode}: {score:.0f} {resp.usage.prompt_tokens} tok {wall:.1f}s {why}", file=sys.stderr)
    finally:
        rt.stop()
    summary = {}
    for name, modes in results.items():
        summary[name] = {}
        for mode, rs in modes.items():
            summary[name][mode] = dict(
                n=len(rs),
                accuracy=sum(r["correct"] for r in rs) / len(rs),
                prompt_tokens_mean=statistics.mean(r["prompt_tokens"] for r in rs),
                schema_tokens_mean=statistics.mean(r["schema_tokens"] for r in rs),
                completion_tokens_mean=statistics.mean(r["completion_tokens"] for r in rs),
                seconds_p50=statistics.median(r["seconds"] for r in rs),
                seconds_mean=statistics.mean(r["seconds"] for r in rs),
                tools_mean=statistics.mean(r["tools"] for r in rs),
            )
        full, deferred = summary[name]["full"], summary[name]["deferred"]
        summary[name]["deferred_vs_full"] = dict(
            prompt_tokens=deferred["prompt_tokens_mean"] / full["prompt_tokens_mean"],
            prompt_plus_schema_tokens=(deferred["prompt_tokens_mean"] + deferred["schema_tokens_mean"]) / full["prompt_tokens_mean"],
            seconds_p50=deferred["seconds_p50"] / full["seconds_p50"],
            accuracy_delta=deferred["accuracy"] - full["accuracy"],
            same_answer=sum(a["calls"] == b["calls"] for a, b in zip(modes["full"], modes["deferred"])) / len(modes["full"]),
        )
    (tmp / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(dict(benchmark="deferred_tools", model=args.model, per_set=args.n, max_tokens=args.max_tokens,
                          wall_s=time.perf_counter() - started, load_avg=os.getloadavg()[0], details=str(tmp / "results.json"),
                          sets=summary)))


if __name__ == "__main__":
    main()
