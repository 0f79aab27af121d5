"""The eval gate end to end on the tiny model, through the runtime's own serving path.

The "specialist" is a random LoRA adapter; the suites' expected answers are what it says
(greedy, recorded once through the gate itself), so it scores 100% by construction and is
recorded as the baseline. A deliberately worse adapter (the same LoRA with its B matrices
negated) must fail; an equal one (same weights, other file bytes, so nothing comes from
the cache) must pass; a second run must decide from the cache without importing MLX.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mlx.core as mx

from tests.serving_support import write_lora_adapter
from tests.tiny_model import build_tiny_model
from tinygpt.runtime.contracts.evals import BaselineFile, GateResult
from tinygpt.runtime.contracts.io import read_json
from tinygpt.workers.evalgate.rows import GateInputError
from tinygpt.workers.evalgate import evaluate_gate

CITIES = ["Paris", "Berlin", "London", "Rome", "Madrid", "Oslo", "Vienna", "Prague", "Lisbon", "Dublin", "Athens", "Warsaw"]
# Bounded arguments (enum, maximum): a random model would otherwise write one string forever.
TOOLS = [
    {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": {arg: schema}, "required": [arg]}}}
    for name, desc, arg, schema in [("get_weather", "Weather in a city.", "city", {"type": "string", "enum": CITIES}),
                                    ("set_timer", "Start a timer.", "minutes", {"type": "integer", "minimum": 1, "maximum": 99})]
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One TINYGPT_HOME (and so one result cache) for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("gate-home")
        mp.setenv("TINYGPT_HOME", str(path))
        yield path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _project(root: Path, model: Path, **gate) -> Path:
    suites = [
        {"name": "echo", "kind": "exact_match", "data": "evals/echo.jsonl", "threshold": 0.1},
        {"name": "tools", "kind": "tool_call", "data": "evals/tools.jsonl", "threshold": 0.1, "options": {"strings": "exact"}},
    ]
    doc = {"name": "gate-test", "base_model": str(model), "eval_suites": suites, "gate": gate}
    (root / "tinygpt.project.json").write_text(json.dumps(doc, indent=2))
    return root / "tinygpt.project.json"


def _resave(src: Path, dst: Path, transform) -> Path:
    shutil.copytree(src, dst)
    weights = mx.load(str(src / "adapters.safetensors"))
    mx.save_safetensors(str(dst / "adapters.safetensors"), {k: transform(k, v) for k, v in weights.items()}, metadata={"copy": dst.name})
    return dst


@pytest.fixture(scope="module")
def world(home, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    (root / "evals").mkdir()
    good = write_lora_adapter(root / "adapters" / "weather", tiny_model_dir, seed=1, std=0.2)
    equal = _resave(good, root / "adapters" / "weather-copy", lambda k, v: v)
    worse = _resave(good, root / "adapters" / "weather-bad", lambda k, v: -v if k.endswith("lora_b") else v)
    echo = [{"id": f"e{i}", "prompt": f"Tell me about {c}.", "expected": "?", "max_tokens": 8} for i, c in enumerate(CITIES)]
    tools = [{"id": f"t{i}", "prompt": f"Weather in {c}?", "tools": TOOLS, "tool_choice": "required",
              "parallel_tool_calls": False, "expected": [], "max_tokens": 96} for i, c in enumerate(CITIES)]
    _jsonl(root / "evals" / "echo.jsonl", echo)
    _jsonl(root / "evals" / "tools.jsonl", tools)
    project = _project(root, tiny_model_dir)
    # Golden answers: what the specialist says, through the same gate path.
    said = evaluate_gate(project, candidate=good, baseline="none", use_cache=False)
    echo_out, tools_out = ({i.id: i.output for i in s.items} for s in said.candidate.suites)
    for row in echo:
        row["expected"] = echo_out[row["id"]]
    for row in tools:
        calls = json.loads(tools_out[row["id"]])
        row["expected"] = [{"name": c["name"], "arguments": {k: [v] for k, v in json.loads(c["arguments"]).items()}} for c in calls]
    _jsonl(root / "evals" / "echo.jsonl", echo)
    _jsonl(root / "evals" / "tools.jsonl", tools)
    recorded = evaluate_gate(project, candidate=good, specialist="weather", update_baseline=True)
    assert [s.mean for s in recorded.candidate.suites] == [1.0, 1.0]
    return {"root": root, "project": project, "good": good, "equal": equal, "worse": worse, "model": tiny_model_dir}


def _cli(argv: list[str]) -> int:
    import argparse

    from tinygpt.runtime.commands import eval_gate

    parser = argparse.ArgumentParser()
    eval_gate.configure(parser)
    return eval_gate.run(parser.parse_args(argv))


def test_a_worse_adapter_fails_the_gate(world, capsys):
    out = world["root"] / "out" / "gate-result.json"
    code = _cli(["--project", str(world["project"]), "--candidate", str(world["worse"]), "--specialist", "weather", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1 and "REGRESSION" in printed and "FAIL" in printed
    result = read_json(out, GateResult)
    assert result.verdict == "regression" and result.baseline_source.startswith("recorded baseline")
    for v in result.suites:
        assert not v.passed and v.baseline == 1.0 and v.candidate < 0.5 and v.significant, v
        assert v.delta_ci95[1] < 0 and "more than the threshold" in v.reason
    assert [s.key for s in result.baseline.suites] == [s.key for s in read_json(world["root"] / "tinygpt.eval-baseline.json", BaselineFile).baselines[0].report.suites]


def test_an_equal_adapter_passes(world):
    ticks = []
    result = evaluate_gate(world["project"], candidate=world["equal"], specialist="weather",
                           progress=lambda done, total: ticks.append((done, total)))
    assert result.verdict == "pass", result.message
    # One tick per answered request, counted up to a total fixed from the start.
    total = ticks[0][1]
    assert ticks == [(i, total) for i in range(total + 1)] and total > 0
    assert result.candidate.adapter_digest != result.baseline.adapter_digest  # other bytes: really run
    assert result.extra["cache"]["ran"] == ["candidate:echo", "candidate:tools"]
    for v in result.suites:
        assert v.passed and v.delta == 0.0 and not v.significant and v.reason.startswith("same as the baseline")


def test_cache_hit_decides_without_importing_mlx_or_running_the_model(world, home):
    evaluate_gate(world["project"], candidate=world["equal"], specialist="weather")  # the cache holds it now
    script = textwrap.dedent(f"""
        import argparse, sys
        from tinygpt.runtime.commands import eval_gate
        parser = argparse.ArgumentParser()
        eval_gate.configure(parser)
        code = eval_gate.run(parser.parse_args({["--project", str(world["project"]), "--candidate", str(world["equal"]),
                                                 "--specialist", "weather", "--out", str(world["root"] / "hit.json")]!r}))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm") or m.endswith("evalgate.runner"))
        print("HEAVY", heavy)
        sys.exit(code)
    """)
    env = {"TINYGPT_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=world["root"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout and "nothing (all from the cache)" in proc.stdout
    hit = read_json(world["root"] / "hit.json", GateResult)
    assert hit.verdict == "pass" and hit.extra["cache"] == {"hits": 4, "misses": 0, "ran": []}


def test_changes_rerun_only_what_they_touch(world, tmp_path):
    copy = tmp_path / "proj"
    shutil.copytree(world["root"], copy)
    project, equal = copy / "tinygpt.project.json", copy / "adapters" / "weather-copy"
    # Only thresholds changed: decided from the cache.
    doc = json.loads(project.read_text())
    doc["eval_suites"][1]["threshold"] = 0.2
    project.write_text(json.dumps(doc))
    assert evaluate_gate(project, candidate=equal, specialist="weather").extra["cache"]["ran"] == []
    # One suite's data changed: that suite reruns, for the candidate and the baseline.
    rows = (copy / "evals" / "echo.jsonl").read_text().splitlines()
    (copy / "evals" / "echo.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    result = evaluate_gate(project, candidate=equal, specialist="weather")
    assert result.extra["cache"]["ran"] == ["candidate:echo", "baseline:echo"] and result.verdict == "pass"
    assert result.candidate.suites[0].n == len(CITIES) - 1
    # A new base model in the pins: the candidate reruns on it; the recorded baseline keeps its own.
    other = build_tiny_model(tmp_path / "other-base", seed=5)
    doc["base_model"] = str(other)
    project.write_text(json.dumps(doc))
    result = evaluate_gate(project, candidate=equal, specialist="weather")
    assert result.extra["cache"]["ran"] == ["candidate:echo", "candidate:tools"]
    assert result.candidate.model_digest != result.baseline.model_digest


def test_baseline_changes_only_with_update_baseline(world, tmp_path):
    record = world["root"] / "tinygpt.eval-baseline.json"
    before = record.read_bytes()
    evaluate_gate(world["project"], candidate=world["worse"], specialist="weather")
    assert record.read_bytes() == before
    copy = tmp_path / "proj"
    shutil.copytree(world["root"], copy)
    worse = copy / "adapters" / "weather-bad"
    assert evaluate_gate(copy / "tinygpt.project.json", candidate=worse, specialist="weather", update_baseline=True).verdict == "regression"
    (rec,) = read_json(copy / "tinygpt.eval-baseline.json", BaselineFile).baselines
    assert rec.subject == "weather" and rec.report.adapter == "adapters/weather-bad"
    again = evaluate_gate(copy / "tinygpt.project.json", candidate=worse, specialist="weather")
    assert again.verdict == "pass" and again.extra["cache"]["ran"] == []


def test_without_a_baseline_the_minimum_decides(world, tmp_path):
    copy = tmp_path / "proj"
    shutil.copytree(world["root"], copy)
    project = _project(copy, world["model"], baseline="none")
    doc = json.loads(project.read_text())
    doc["eval_suites"][0]["minimum"] = 0.5
    project.write_text(json.dumps(doc))
    bad = evaluate_gate(project, candidate=copy / "adapters" / "weather-bad", specialist="weather")
    assert bad.verdict == "regression" and bad.baseline is None and bad.extra["cache"]["ran"] == []
    echo, tools = bad.suites
    assert not echo.passed and "no baseline" in echo.reason and "misses the minimum 0.5" in echo.reason
    assert tools.passed and "no minimum either: reported, not gated" in tools.reason
    good = evaluate_gate(project, candidate=copy / "adapters" / "weather-copy", specialist="weather")
    assert good.verdict == "pass" and "meets the minimum 0.5" in good.suites[0].reason


def _package(registry: Path, name: str, version: str, adapter: Path) -> tuple[Path, str]:
    """A published specialist folder with its lock (sha256 of every file) and an index entry."""
    pkg = registry / name / version
    shutil.copytree(adapter, pkg)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(pkg.iterdir())}
    digest = hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    (pkg / "lock.json").write_text(json.dumps({"name": name, "version": version, "files": files, "digest": digest}))
    entry = {"name": name, "version": version, "digest": digest, "path": f"{name}/{version}", "created_at": 1.0}
    (registry / "index.json").write_text(json.dumps({"specialists": [entry]}))
    return pkg, digest


def test_the_pinned_version_is_the_baseline_and_its_sha256_is_enforced(world, tmp_path):
    copy = tmp_path / "proj"
    shutil.copytree(world["root"], copy)
    (copy / "tinygpt.eval-baseline.json").unlink()
    _, digest = _package(copy / "specialists", "weather", "1", world["good"])
    doc = json.loads((copy / "tinygpt.project.json").read_text())
    doc["specialists"] = [{"name": "weather", "version": "1", "sha256": digest}]
    (copy / "tinygpt.project.json").write_text(json.dumps(doc))
    result = evaluate_gate(copy / "tinygpt.project.json", candidate=copy / "adapters" / "weather-bad", specialist="weather")
    assert result.verdict == "regression" and result.baseline_source == "pinned weather@1"
    assert result.baseline.adapter_digest == digest and [s.mean for s in result.baseline.suites] == [1.0, 1.0]
    # Without --candidate the pinned version itself is the candidate; nothing recorded, so the base model is its baseline.
    itself = evaluate_gate(copy / "tinygpt.project.json")
    assert itself.extra["subject"] == "weather" and itself.baseline_source == "the base model"
    doc["specialists"][0]["sha256"] = "0" * 64
    (copy / "tinygpt.project.json").write_text(json.dumps(doc))
    with pytest.raises(GateInputError, match="but the pin requires 000000000000"):
        evaluate_gate(copy / "tinygpt.project.json", candidate=copy / "adapters" / "weather-bad", specialist="weather")


def test_bfcl_latency_and_sampled_passes_through_the_runtime(home, tiny_model_dir, tmp_path):
    bfcl = Path(__file__).parent / "data" / "evals" / "bfcl"
    _jsonl(tmp_path / "lat.jsonl", [{"id": f"l{i}", "prompt": f"Hello {i}", "max_tokens": 4} for i in range(4)])
    _jsonl(tmp_path / "echo.jsonl", [{"id": f"e{i}", "prompt": f"Say {c}.", "expected": c, "max_tokens": 4} for i, c in enumerate(CITIES[:4])])
    suites = [
        {"name": "bfcl", "kind": "tool_call", "format": "bfcl", "data": str(bfcl / "BFCL_v3_sample.json"), "max_tokens": 64},
        {"name": "ttft", "kind": "latency", "data": "lat.jsonl", "metric": "ttft_p95_ms", "minimum": 60000},
        {"name": "sampled", "kind": "exact_match", "data": "echo.jsonl", "passes": 3, "temperature": 1.0},
    ]
    project = tmp_path / "tinygpt.project.json"
    project.write_text(json.dumps({"name": "b", "base_model": str(tiny_model_dir), "eval_suites": suites}))
    result = evaluate_gate(project, use_cache=False)
    assert result.verdict == "pass" and result.baseline is None
    bfcl_report, ttft, sampled = result.candidate.suites
    # Every imported schema was accepted by the production grammar (a refusal would be exit 2).
    assert bfcl_report.n == 7 and all(i.output for i in bfcl_report.items)
    assert ttft.value is not None and 0 < ttft.ci95[0] <= ttft.value <= ttft.ci95[1] and ttft.direction == "lower"
    assert all(len(i.passes) == 3 for i in sampled.items) and sampled.passes == 3
    # Seeded sampling: the same K passes again give the same per-pass scores.
    again = evaluate_gate(project, use_cache=False).candidate.suites[2]
    assert [i.passes for i in again.items] == [i.passes for i in sampled.items]
    assert [i.output for i in again.items] == [i.output for i in sampled.items]


def test_the_pipeline_stage_calls_the_same_gate(world, tmp_path):
    from tinygpt.runtime.contracts.jobs import EvalJob
    from tinygpt.workers.evalgate import run

    job = EvalJob(project_file=str(world["project"]), specialist="weather", candidate_dir=str(world["worse"]), output_dir=str(tmp_path / "a"))
    result = run(job)
    assert result.verdict == "regression" and read_json(tmp_path / "a" / "gate-result.json", GateResult) == result
    bad = EvalJob(project_file=str(world["project"]), specialist="weather", candidate_dir=str(tmp_path / "gone"), output_dir=str(tmp_path / "b"))
    with pytest.raises(GateInputError) as e:
        run(bad)
    from tinygpt.queue.errors import PermanentError

    assert isinstance(e.value, PermanentError)  # the queue fails it at once: retrying cannot fix input
    assert read_json(tmp_path / "b" / "gate-result.json", GateResult).verdict == "error"
