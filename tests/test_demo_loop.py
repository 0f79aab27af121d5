"""The demo against a real runtime on the tiny model: the agent loop, then `tinygpt demo` end to end.

A random tiny model cannot solve a task, so the end-to-end test makes the checker pass
every run: what is tested is the plumbing (recording, feedback, queue, dataset, training,
gate, hot swap, summary), not an improvement. The improvement on the real model is
measured by running the demo (benchmarks/RESULTS.md, "demo").
"""

from __future__ import annotations

import argparse
import json

import msgspec
import pytest

from tests.serving_support import running
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory
from tinygpt.runtime.demo import agent as agent_mod
from tinygpt.runtime.demo import tasks as T
from tinygpt.runtime.demo.agent import AgentConfig, make_client, run_episode, run_many
from tinygpt.runtime.demo.fs import TOOL_NAMES
from tinygpt.runtime.demo.pipeline import trajectory_file


def test_agent_runs_tasks_through_the_runtime_and_reports_feedback(tiny_model_dir, tmp_path):
    work = T.generate(3, 0, "train")
    with running(tiny_model_dir, tmp_path) as rt:
        client = make_client(rt.url)
        cfg = AgentConfig(model="base", temperature=0.8, seed=5, max_turns=2, max_tokens=160)
        episodes = run_many(client, [(t, 0) for t in work], cfg, concurrency=3)
        again = run_episode(client, work[0], cfg)
        rt.recorder.seal_all().result()
        root = tmp_path / "trajectories"

        assert [e.task_id for e in episodes] == [t.id for t in work]
        assert len({e.trajectory_id for e in episodes}) == 3
        # The same seed per attempt and turn: a rerun makes the same calls.
        assert again.calls == episodes[0].calls and again.trajectory_id != episodes[0].trajectory_id
        for episode in episodes:
            assert episode.served_by == rt.registry.base_name
            assert 1 <= episode.turns <= 2 and episode.outcome.calls == len(episode.calls)
            if not episode.calls:  # a random model may ramble past max_tokens inside its call
                assert episode.turns == 1 and not episode.outcome.finished and "<tool_call>" in episode.answer
            traj = read_any(trajectory_file(root, episode.trajectory_id), Trajectory)
            # One recorded step per request, the tool list as offered, the verdict as feedback.
            assert len(traj.steps) == episode.turns
            assert [t["function"]["name"] for t in traj.tools] == TOOL_NAMES
            assert [(f.reward, f.source) for f in traj.feedback] == [(float(episode.outcome.success), "demo-checker")]
            assert traj.steps[0].constraint == "tools" and traj.steps[0].sampling.temperature == pytest.approx(0.8)
            if episode.turns == 2:
                # The tool results went back with the second request, attached to the first step.
                assert len(traj.steps[0].tool_results) == len(traj.steps[0].tool_calls) == 1
        assert sum(e.turns == 2 for e in episodes) >= 1


def _demo_args(**overrides) -> argparse.Namespace:
    from tinygpt.runtime.commands import demo

    parser = argparse.ArgumentParser()
    demo.configure(parser)
    argv = []
    for key, value in overrides.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return parser.parse_args(argv)


def test_demo_command_runs_the_loop_end_to_end(tiny_model_dir, tmp_path, redis_url, monkeypatch, capsys):
    from tinygpt.runtime.commands import demo

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    real_check = T.check

    def always_succeeds(*args, **kwargs):
        return msgspec.structs.replace(real_check(*args, **kwargs), success=True, reason="")

    monkeypatch.setattr(agent_mod, "check", always_succeeds)
    work = tmp_path / "demo"
    args = _demo_args(model=tiny_model_dir, work=work, tasks=3, attempts=2, test_tasks=2, gate_tasks=2, iters=2,
                      batch_size=2, max_turns=2, concurrency=4, lora_layers=2, project="demo-test", json=True)  # fmt: skip
    assert demo.run(args) == 0

    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((work / "demo-summary.json").read_text())
    assert summary["collection"]["episodes"] == 6 and summary["collection"]["successes"] == 6
    pipe = summary["pipeline"]
    assert pipe["files"] == 6 and pipe["ingested"] == 6 and pipe["quarantined"] == 0 and pipe["worker_exit"] == 0
    # A random model often rambles to max_tokens: those sessions are dropped on quality (the
    # label stage's min_quality), the seeded rest carry on.
    assert pipe["kept_by_label"] >= 1 and pipe["kept_by_label"] + pipe["dropped_by_label"] + pipe["duplicates"] == 6
    assert pipe["rows"]["train"] >= 1 and pipe["rows"]["test"] == 0
    assert summary["training"]["steps_done"] == 2 and (work / "adapter" / "adapters.safetensors").is_file()
    assert summary["gate"]["verdict"] == "pass" and summary["gate"]["n"] == 2
    assert (work / "gate-result.json").is_file()
    published = summary["published"]["model"]
    assert published == "fileops@1" and summary["published"]["via"].startswith("pin + registry pull")
    # Published as a package (lock written last) and pinned to exactly that lock digest.
    package = tmp_path / "home" / "demo" / "specialists" / "fileops" / "1"
    assert (package / "lock.json").is_file() and (package / "README.md").is_file()
    pins = json.loads((work / "tinygpt.project.json").read_text())["specialists"]
    assert pins == [{"name": "fileops", "version": "1", "sha256": summary["published"]["digest"]}]
    # The held-out runs after the swap were answered by the specialist, in the same runtime.
    assert summary["before"]["served_by"] == tiny_model_dir.name and summary["after"]["served_by"] == published
    assert summary["before"]["n"] == summary["after"]["n"] == 2
    before, after, paired = summary["before"], summary["after"], summary["paired"]
    assert len(before["solved"]) == before["successes"] and len(after["solved"]) == after["successes"]
    assert paired["gained"] - paired["lost"] == after["successes"] - before["successes"]
    assert set(summary["seconds"]) >= {"before", "collect", "pipeline", "train", "gate", "publish", "after", "total"}
    # Eval sessions are recorded but never reach the dataset: only the six collected ones were enqueued.
    assert len(list((work / "trajectories").glob("*.msgpack"))) == 6 + 2 + 2


def test_demo_command_refuses_bad_options(capsys):
    from tinygpt.runtime.commands import demo

    assert demo.run(_demo_args(tasks=0)) == 2
    assert "--tasks must be at least 1" in capsys.readouterr().err
    assert demo.run(_demo_args(temperature=0)) == 2
    assert "--temperature" in capsys.readouterr().err


def test_demo_against_a_running_runtime(tiny_model_dir, tmp_path, redis_url, monkeypatch, capsys):
    """--url: sessions go through a runtime started elsewhere; the specialist arrives by the admin API."""
    from tinygpt.runtime.commands import demo

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    real_check = T.check
    monkeypatch.setattr(agent_mod, "check", lambda *a, **k: msgspec.structs.replace(real_check(*a, **k), success=True, reason=""))
    from tinygpt.runtime.demo.specialist import registry_dir

    # The admin API loads only from the cache and listed directories: list the demo's registry.
    with running(tiny_model_dir, tmp_path / "served", admin_key="admin-secret", project="elsewhere",
                 adapter_dirs=[str(registry_dir())]) as rt:  # fmt: skip
        args = _demo_args(url=f"{rt.url}/v1", admin_key="admin-secret", trajectories_dir=tmp_path / "served" / "trajectories",
                          work=tmp_path / "demo", tasks=2, attempts=2, test_tasks=2, gate_tasks=2, iters=1, batch_size=2,
                          max_turns=2, lora_layers=2, json=True, model=tiny_model_dir)  # fmt: skip
        assert demo.run(args) == 0
        summary = json.loads(capsys.readouterr().out)
        # The runtime's own project, read from its recordings; the swap went through its admin API.
        assert summary["project"] == "elsewhere" and summary["pipeline"]["ingested"] == 4
        assert summary["published"]["via"].startswith("POST /admin/adapters")
        assert rt.adapters_state()["current"] == {"fileops": "fileops@1"}
        assert summary["after"]["served_by"] == "fileops@1"


def test_demo_stops_cleanly_when_nothing_succeeds(tiny_model_dir, tmp_path, redis_url, monkeypatch, capsys):
    """A random model solves nothing: the label stage keeps nothing, the loop stops with a reason."""
    from tinygpt.runtime.commands import demo

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    work = tmp_path / "demo"
    args = _demo_args(model=tiny_model_dir, work=work, tasks=2, attempts=1, test_tasks=1, gate_tasks=1, max_turns=1)
    assert demo.run(args) == 1
    err = capsys.readouterr().err
    assert "the loop stopped" in err and "nothing to train on" in err
    summary = json.loads((work / "demo-summary.json").read_text())
    assert summary["collection"]["successes"] == 0 and summary["pipeline"] == {} and summary["after"] is None
    assert "nothing to train on" in summary["note"]


def test_the_paired_sign_test():
    from tinygpt.runtime.demo.report import Score, paired, sign_test

    assert sign_test(7, 0) == 2 / 2**7  # the default-model demo run: 7 tasks gained, none lost
    assert sign_test(5, 1) == 2 * (1 + 6) / 2**6 and sign_test(1, 5) == sign_test(5, 1)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0

    def score(solved):
        return Score(model="m", served_by="m", n=5, successes=len(solved), success_rate=len(solved) / 5, ci95=(0, 1),
                     first_call_accuracy=0, solved=solved)  # fmt: skip

    p = paired(score(["a", "b", "c"]), score(["b", "c", "d", "e"]))
    assert (p.gained, p.lost) == (2, 1) and p.p_value == 1.0


def test_a_crashed_gate_process_is_run_once_more_then_named(tmp_path, monkeypatch):
    import subprocess

    from tinygpt.runtime.demo import specialist
    from tinygpt.runtime.demo.errors import DemoError

    calls = []

    def crashes(cmd, check=False):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, -11)

    monkeypatch.setattr(specialist.subprocess, "run", crashes)
    with pytest.raises(DemoError, match="killed by SIGSEGV"):
        specialist.gate(tmp_path / "p.json", tmp_path / "adapter", "fileops", tmp_path / "gate-result.json")
    assert len(calls) == 2 and "faulthandler" in calls[0]
