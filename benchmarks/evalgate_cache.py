"""Eval gate wall time: cold (candidate and baseline run) vs a cache hit vs one changed suite.

    python benchmarks/evalgate_cache.py                          # tiny random model (seconds)
    python benchmarks/evalgate_cache.py --model smollm2-135m-instruct --rows 16 --out r.json

Builds a throwaway project in a temp dir: an exact-match suite and a tool-call suite of
`--rows` rows each, a random LoRA adapter as the candidate and the base model as its
baseline. Every measurement is a fresh `tinygpt eval-gate` process (what a pre-commit
hook runs), timed from process start to exit:

- cold: empty result cache, both suites run for candidate and baseline;
- hit: nothing changed (best and median of `--hits` runs), plus whether the process
  imported MLX (it must not);
- changed: one row of one suite edited, so only that suite reruns (candidate + baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What the pre-commit hook runs, plus a report of heavy imports (before `tinygpt` has the
# command registered, the module is driven directly; the code path is the same).
GATE = """
import argparse, sys
from tinygpt.runtime.commands import eval_gate
parser = argparse.ArgumentParser()
eval_gate.configure(parser)
code = eval_gate.run(parser.parse_args(sys.argv[1:]))
print("MLX_IMPORTED", any(m.split(".")[0] == "mlx" for m in sys.modules), file=sys.stderr)
sys.exit(code)
"""

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin", "Rome", "Oslo"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "set_timer", "description": "Start a timer.", "parameters": {
        "type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 99}}, "required": ["minutes"]}}},
]


def build(root: Path, model: str | None, rows: int) -> tuple[Path, Path]:
    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx)
    from tests.serving_support import write_lora_adapter
    from tinygpt.runtime.models import resolve_model

    if model:
        model_dir = resolve_model(model)
    else:
        from tests.tiny_model import build_tiny_model

        model_dir = build_tiny_model(root / "tiny-model")
    adapter = write_lora_adapter(root / "adapters" / "bench", model_dir, seed=1, std=0.05)
    cities = ["Paris", "Berlin", "Rome", "Oslo"]
    (root / "evals").mkdir()
    with open(root / "evals" / "echo.jsonl", "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"e{i}", "prompt": f"Name a city number {i}.", "expected": cities[i % 4], "max_tokens": 8}) + "\n")
    with open(root / "evals" / "tools.jsonl", "w") as f:
        for i in range(rows):
            c = cities[i % 4]
            f.write(json.dumps({"id": f"t{i}", "prompt": f"What is the weather in {c}?", "tools": TOOLS, "tool_choice": "required",
                                "parallel_tool_calls": False, "max_tokens": 48,
                                "expected": [{"name": "get_weather", "arguments": {"city": [c]}}]}) + "\n")
    suites = [
        {"name": "echo", "kind": "exact_match", "data": "evals/echo.jsonl", "threshold": 0.05},
        {"name": "tools", "kind": "tool_call", "data": "evals/tools.jsonl", "threshold": 0.05},
    ]
    project = root / "tinygpt.project.json"
    project.write_text(json.dumps({"name": "bench", "base_model": str(model_dir), "eval_suites": suites, "gate": {"baseline": "base"}}))
    return project, adapter


def gate(project: Path, adapter: Path, env: dict) -> dict:
    args = ["--project", str(project), "--candidate", str(adapter), "--specialist", "bench", "--quiet", "--out", str(project.parent / "gate-result.json")]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", GATE, *args], capture_output=True, text=True, env=env, cwd=project.parent)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"eval-gate failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads((project.parent / "gate-result.json").read_text())
    return {"seconds": round(seconds, 3), "mlx_imported": "MLX_IMPORTED True" in proc.stderr, "ran": result["extra"]["cache"]["ran"],
            "verdict": result["verdict"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a cached model name or directory (default: a tiny random model)")
    ap.add_argument("--rows", type=int, default=24, help="rows per suite")
    ap.add_argument("--hits", type=int, default=5, help="cache-hit runs")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tinygpt-gate-bench-") as tmp:
        root = Path(tmp)
        project, adapter = build(root, args.model, args.rows)
        # A fresh result cache; the project names the model by its directory, so a cached
        # model is used in place.
        env = {**os.environ, "TINYGPT_HOME": str(root / "home"), "PYTHONPATH": str(ROOT)}
        cold = gate(project, adapter, env)
        hits = [gate(project, adapter, env) for _ in range(args.hits)]
        lines = (root / "evals" / "echo.jsonl").read_text().splitlines()
        lines[0] = lines[0].replace('"max_tokens": 8', '"max_tokens": 7')
        (root / "evals" / "echo.jsonl").write_text("\n".join(lines) + "\n")
        changed = gate(project, adapter, env)
    hit_s = [h["seconds"] for h in hits]
    report = {
        "benchmark": "evalgate_cache",
        "model": args.model or "tiny random llama (tests/tiny_model.py)",
        "rows_per_suite": args.rows,
        "suites": 2,
        "cold_s": cold["seconds"],
        "cold_ran": cold["ran"],
        "hit_best_s": min(hit_s),
        "hit_median_s": statistics.median(hit_s),
        "hit_ran": hits[0]["ran"],
        "hit_imports_mlx": any(h["mlx_imported"] for h in hits),
        "changed_one_suite_s": changed["seconds"],
        "changed_ran": changed["ran"],
        "cold_over_hit": round(cold["seconds"] / min(hit_s), 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
