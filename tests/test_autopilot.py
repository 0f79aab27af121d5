"""The autopilot: a build policy counts its selection's new rows, fires, and follows the build
through a real queue and worker on the tiny model (a failing gate here: kept, never published)."""

from __future__ import annotations

import json
import random
import re

import msgspec
import pytest

from tests.finetune_fixtures import TOOLS, task_records
from tests.fixtures.trajectories import helpers
from tinygpt.queue import autopilot, keys, stages
from tinygpt.queue.worker import PipelineWorker
from tinygpt.runtime.contracts import GateResult, read_json
from tinygpt.runtime.contracts.trajectory import Feedback, Step, ToolCall, Trajectory

PROJECT = "pilot"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_project(root, model, *, minimum: float | None):
    rows = [
        {"id": f"r{i}", "prompt": r["messages"][0]["content"], "tools": TOOLS, "tool_choice": "required",
         "expected": [{"name": c["function"]["name"], "arguments": {k: [v] for k, v in c["function"]["arguments"].items()}}
                      for c in r["messages"][1]["tool_calls"]], "max_tokens": 24}
        for i, r in enumerate(task_records(4, seed=5))
    ]
    (root / "evals").mkdir(exist_ok=True)
    (root / "evals" / "calls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = {"name": "calls", "kind": "tool_call", "data": "evals/calls.jsonl", "threshold": 1.0, "minimum": minimum}
    policy = {"select": {"tools": ["get_weather"]}, "trigger": {"min_new_rows": 3, "min_interval_s": 0, "max_per_day": 2},
              "training": {"steps": 3, "batch_size": 2, "eval_every": 0, "checkpoint_every": 0}}
    doc = {"name": PROJECT, "base_model": str(model), "eval_suites": [suite], "registries": ["registry"],
           "specialists": [{"name": "weather", "build": policy}]}
    (root / "tinygpt.project.json").write_text(json.dumps(doc))
    return root / "tinygpt.project.json"


def recording(model_dir, digest: str, i: int, tool: str = "get_weather", looping: bool = False) -> Trajectory:
    """A scored session on the tiny model: one tool call, feedback 1.0."""
    rng = random.Random(i)
    output = [5, 6, 7, 8] * 12 if looping else [rng.randrange(3, 200) for _ in range(12)]
    step = Step(index=0, prompt_ids=[rng.randrange(3, 200) for _ in range(20)], output_ids=output, finish_reason="tool_calls",
                tool_calls=[ToolCall(id="c1", name=tool, arguments=json.dumps({"city": f"c{i}"} if tool == "get_weather" else {"minutes": i}), valid=True)])
    tid = f"traj-{tool}-{i}"
    offered = [t for t in TOOLS if t["function"]["name"] == tool]
    # Named as the runtime names a base given by directory: its folder name.
    return Trajectory(id=tid, base_model=model_dir.name, base_digest=digest, project=PROJECT, tools=offered, steps=[step],
                      feedback=[Feedback(trajectory_id=tid, reward=1.0)])


def record(conn, tmp_path, trajs) -> None:
    files = helpers.write(tmp_path, {f"{t.id}.msgpack": msgspec.msgpack.encode(t) for t in trajs})
    helpers.run_stages(conn, files)


def work(conn, *queues) -> None:
    worker = PipelineWorker([stages.get_queue(conn, q) for q in queues], connection=conn, heartbeat_s=0.5, drain=True,
                            maintenance_interval=1)
    worker.work(burst=True, logging_level="WARNING")


def status(conn, project_file):
    from tinygpt.runtime.project import load_project

    (row,) = autopilot.overview(conn, load_project(project_file))
    return row


def test_a_policy_fires_on_its_rows_and_a_failed_gate_is_kept_not_published(tmp_path, tiny_model_dir, redis_client, redis_url,
                                                                          monkeypatch, capsys):
    from tinygpt.runtime.serving.app import model_digest

    conn, digest = redis_client, model_digest(tiny_model_dir)
    pins = write_project(tmp_path, tiny_model_dir, minimum=2.0)  # accuracy never reaches 2: the gate must refuse
    said: list[str] = []
    pilot = autopilot.Autopilot(pins, redis_url, say=said.append)

    # Two selected rows, one other tool, one loop (dropped by the label stage): 2/3.
    record(conn, tmp_path, [recording(tiny_model_dir, digest, 0), recording(tiny_model_dir, digest, 1),
                            recording(tiny_model_dir, digest, 2, tool="set_timer"),
                            recording(tiny_model_dir, digest, 3, looping=True)])
    pilot.tick()
    row = status(conn, pins)
    assert (row.rows, row.needed, row.waiting, row.building) == (2, 3, "2/3 new rows", "")
    pilot.tick()  # idempotent: reading the log again counts nothing twice
    assert status(conn, pins).rows == 2
    # `tinygpt status` shows the same, from Redis (it never imports MLX; test_cli checks that).
    from tinygpt.runtime import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    assert cli.main(["status"]) == 0
    assert re.search(r"weather\s+│\s+-\s+│\s+2/3 new rows", capsys.readouterr().out)

    record(conn, tmp_path, [recording(tiny_model_dir, digest, 4)])
    pilot.tick()
    row = status(conn, pins)
    assert row.stage == "dataset" and row.building and any("3 new rows" in s for s in said)

    work(conn, "data")
    pilot.tick()
    row = status(conn, pins)
    assert row.stage == "finetune" and set(row.jobs) == {"finetune", "eval", "publish"}
    assert row.rows == 0  # what the dataset holds no longer counts
    record_file = autopilot.build_records("weather")[-1]
    assert record_file.rows == 3 and len(record_file.sources) == 3  # the selection only

    work(conn, "train", "eval")
    pilot.tick()
    row = status(conn, pins)
    assert row.building == "" and row.last_verdict == "regression" and row.last_version == ""
    assert row.last_numbers and row.last_numbers[0].startswith("calls accuracy") and row.last_numbers[0].endswith("FAIL")
    assert "not published, kept in" in row.last_message
    gate = read_json(tmp_path / "home" / "builds" / "weather" / record_file.build_id / "eval" / "gate-result.json", GateResult)
    assert gate.verdict == "regression"
    assert not (tmp_path / "registry" / "weather").exists()  # never published, so never served

    # Its Redis state gone: rebuilt from the build's files and the label log, nothing counted twice.
    conn.delete(keys.autopilot(PROJECT, "weather"), keys.autopilot_pending(PROJECT, "weather"),
                keys.autopilot_trained(PROJECT, "weather"), keys.autopilot_builds(PROJECT, "weather"))
    pilot.tick()
    row = status(conn, pins)
    assert (row.rows, row.last_verdict) == (0, "regression")
    # A whole-Redis wipe: once the pipeline has relabelled the files, the rows the last build
    # trained on still count for nothing, and the last verdict comes back from its folder.
    conn.flushall()
    for t in ("get_weather-0", "get_weather-1", "get_weather-4"):
        helpers.run_stages(conn, [tmp_path / f"traj-{t}.msgpack"])
    pilot.tick()
    row = status(conn, pins)
    assert (row.rows, row.building, row.last_verdict) == (0, "", "regression")
    record(conn, tmp_path, [recording(tiny_model_dir, digest, 5)])
    pilot.tick()
    assert status(conn, pins).rows == 1


def test_the_trigger_waits_for_the_interval_and_the_daily_cap(tmp_path, tiny_model_dir, redis_client, redis_url):
    conn = redis_client
    pins = write_project(tmp_path, tiny_model_dir, minimum=None)
    doc = json.loads(pins.read_text())
    doc["specialists"][0]["build"]["trigger"] = {"min_new_rows": 1, "min_interval_s": 3600, "max_per_day": 1}
    pins.write_text(json.dumps(doc))
    record(conn, tmp_path, [recording(tiny_model_dir, "d" * 64, 0)])
    pilot = autopilot.Autopilot(pins, redis_url)
    policy = pilot.policies()["weather"]
    autopilot._consume(conn, "weather", policy, {})
    assert autopilot.waiting(conn, "weather", policy, {}) == (1, "")
    import time

    soon = {"started_at": str(time.time() - 60)}
    assert "next build in" in autopilot.waiting(conn, "weather", policy, soon)[1]
    conn.zadd(keys.autopilot_builds(PROJECT, "weather"), {"b1": time.time() - 7200})
    assert "daily cap reached (1/1" in autopilot.waiting(conn, "weather", policy, {"started_at": str(time.time() - 7200)})[1]
