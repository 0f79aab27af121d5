"""The factory runs itself: `tinygpt up` alone turns scored sessions into a gated, published,
hot-swapped specialist. No `build` command, no orchestration: a client chats, posts
feedback and waits; the build policy in the pin file does the rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import openai

from tests.finetune_fixtures import TOOLS, task_records
from tests.test_up import start_up

# An enum keeps the tiny random model's calls short: a free string may ramble to max_tokens.
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris", "Rome"]}},
    "required": ["city"], "additionalProperties": False}}}]


def write_project(root, model) -> None:
    rows = [
        {"id": f"r{i}", "prompt": r["messages"][0]["content"], "tools": TOOLS, "tool_choice": "required",
         "expected": [{"name": c["function"]["name"], "arguments": {k: [v] for k, v in c["function"]["arguments"].items()}}
                      for c in r["messages"][1]["tool_calls"]], "max_tokens": 16}
        for i, r in enumerate(task_records(3, seed=7))
    ]
    (root / "evals").mkdir()
    (root / "evals" / "calls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = {
        "select": {"tools": ["get_weather"], "metadata": {"team": "ops"}},
        "trigger": {"min_new_rows": 3, "min_interval_s": 0, "max_per_day": 2},
        "training": {"steps": 3, "batch_size": 2, "eval_every": 0, "checkpoint_every": 0},
        # This test is about the loop; the gate's verdicts have their own tests.
        "gate": {"suites": ["calls"], "threshold": 1.0},
    }
    doc = {"name": "ops", "base_model": str(model), "registries": ["registry"],
           "eval_suites": [{"name": "calls", "kind": "tool_call", "data": "evals/calls.jsonl"}],
           "specialists": [{"name": "weather", "version": "*", "build": policy}],
           # The tiny random model's grammar-constrained calls differ by a few tokens, so its
           # sessions are near duplicates; this test is about the loop (dedupe has its own tests).
           "pipeline": {"dedupe": {"near_threshold": 0.99}}}
    (root / "tinygpt.project.json").write_text(json.dumps(doc))


def session(url: str, i: int, model: str = "base") -> tuple[str, str]:
    """One scored agent session: a tool call, then feedback. Returns (trajectory id, model served)."""
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": f"What's the weather in city {i}?"}], tools=WEATHER,
        tool_choice="required", parallel_tool_calls=False, max_tokens=128, temperature=0.8, seed=i,
        metadata={"team": "ops"}, extra_headers={"X-TinyGPT-Session": f"s{i}-{model}"},
    )
    assert raw.parse().choices[0].finish_reason == "tool_calls"
    tid = raw.headers["x-tinygpt-trajectory"]
    body = json.dumps({"reward": 1.0, "comment": "right tool"}).encode()
    req = urllib.request.Request(f"{url}/trajectories/{tid}/feedback", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert json.loads(r.read())["feedback"] == 1
    return tid, raw.headers["x-tinygpt-model"]


def expect(proc, *patterns: str, lines: list[str]) -> re.Match:
    """Read up's output until every pattern matched a line, in any order (the autopilot and
    the pin watcher report from their own threads); the output so far on failure."""
    todo, last = list(patterns), None
    for line in iter(proc.stdout.readline, ""):
        lines.append(line)
        for p in list(todo):
            if m := re.search(p, line):
                todo.remove(p)
                last = m
        if not todo:
            return last
    raise AssertionError(f"never saw {todo!r}:\n{''.join(lines)}")


def test_up_builds_gates_publishes_and_swaps_a_specialist_by_itself(tmp_path, tiny_model_dir):
    write_project(tmp_path, tiny_model_dir)
    home = tmp_path / "home"
    proc = start_up(home, tmp_path, "--session-idle", "1")
    # Turns a hang into a failure (measures nothing): SIGTERM stops up and its workers in order.
    watchdog = threading.Timer(900, proc.send_signal, (signal.SIGTERM,))
    watchdog.start()
    lines: list[str] = []
    try:
        url = expect(proc, r"Runtime: (http://\S+/v1)", lines=lines).group(1)
        for i in range(3):
            assert "@" not in session(url, i)[1]  # the base model
        # The policy fires on the third kept row, and the chain runs on the daemon's own workers.
        expect(proc, r"Autopilot: weather: 3 new rows \(≥ 3\): building", lines=lines)
        expect(proc, r"Autopilot: weather: the gate passed; published weather@1", r"Specialists: loaded weather@1", lines=lines)
        # Later sessions are served, and recorded, by the new version.
        tid, served = session(url, 10, model="weather")
        assert served == "weather@1"
        # `tinygpt status`, run beside the daemon, tells the same story.
        env = {**os.environ, "TINYGPT_HOME": str(home), "COLUMNS": "220"}
        env.pop("REDIS_URL", None)
        shown = subprocess.run([sys.executable, "-m", "tinygpt.runtime.cli", "status"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300).stdout
        assert re.search(r"weather\s+│\s+weather@1\s+│\s+0/3 new rows", shown), shown
        assert "pass → weather@1" in shown and "calls accuracy" in shown
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
        watchdog.cancel()
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    from tinygpt.runtime.contracts import read_any
    from tinygpt.runtime.contracts.trajectory import Trajectory

    (path,) = [p for p in (home / "trajectories").glob(f"{tid}.msgpack")]
    step = read_any(path, Trajectory).steps[0]
    assert (step.model, step.adapter_version, step.metadata) == ("weather", "1", {"team": "ops"})
    assert re.search(r"weather@1 \([0-9a-f]{12}\)", text)
