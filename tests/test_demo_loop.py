"""`tinygpt demo` through the daemon, end to end on the tiny model, with real processes.

The demo starts `tinygpt up` (embedded Redis, a worker process) on the project file it
writes, and then behaves like a user's agent only: episodes through the runtime with
feedback, then waiting. A toy environment (defined here, named in the project file by
its entry point, imported by the demo and by up's gate worker alike) rewards any call of
its one tool, which a random tiny model makes: what is tested is the plumbing — the
daemon's own ingest ▶ label ▶ policy trigger ▶ dataset ▶ finetune ▶ environment-suite gate
▶ publish ▶ hot swap, one build per round — not an improvement. The improvement on the
real model is measured by running the demo (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from collections import Counter

import pytest

TOY = '''
from tinygpt.runtime.environments import Environment, EnvTask, Reward, tool

CITIES = ["Paris", "Berlin", "London", "Rome", "Madrid", "Oslo"]


class Weather(Environment):
    tools = [tool("get_weather", "Weather in a city.", {"city": {"type": "string", "enum": CITIES}})]
    max_turns = 1
    max_tokens = 128

    def tasks(self, split, n, seed):
        return [EnvTask(id=f"{split}-{seed}-{i}", kind="ab"[i % 2],
                        messages=[{"role": "user", "content": f"{split} task {i}: the weather in {CITIES[i % 6]}?"}])
                for i in range(n)]

    def reset(self, task):
        return {}

    def step(self, state, name, arguments):
        return {"ok": True, "forecast": "sunny"}

    def score(self, task, state, transcript):
        ok = bool(transcript.calls)
        return Reward(reward=1.0 if ok else 0.0, reason="called" if ok else "no call")


class StrictWeather(Weather):
    """Only the asked city counts; a run that asked for another city achieved that task."""

    def tasks(self, split, n, seed):
        return [EnvTask(id=t.id, kind=t.kind, messages=t.messages, data={"city": CITIES[i % 6]})
                for i, t in enumerate(super().tasks(split, n, seed))]

    def score(self, task, state, transcript):
        asked = [c.arguments.get("city") for c in transcript.calls if c.arguments]
        ok = task.data["city"] in asked
        return Reward(reward=1.0 if ok else 0.0, reason="asked city" if ok else f"asked {asked}")

    def hindsight(self, task, state, transcript):
        asked = [c.arguments.get("city") for c in transcript.calls if c.arguments]
        if not asked or asked[0] not in CITIES:
            return None
        text = task.messages[-1]["content"].replace(task.data["city"], asked[0])
        return EnvTask(id=task.id + "-h", kind=task.kind, messages=[{"role": "user", "content": text}], data={"city": asked[0]})
'''


def _toy_home(tmp_path, monkeypatch, folder: str):
    """A fresh TinyGPT home (up's embedded Redis, no REDIS_URL) and a folder holding the toy module."""
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    monkeypatch.delenv("REDIS_URL", raising=False)
    work = tmp_path / folder
    work.mkdir()
    (work / "toyweather.py").write_text(textwrap.dedent(TOY))
    return home, work


def _demo_args(**overrides) -> argparse.Namespace:
    from tinygpt.runtime.commands import demo

    parser = argparse.ArgumentParser()
    demo.configure(parser)
    argv = []
    for key, value in overrides.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return parser.parse_args(argv)


def test_demo_drives_the_daemon_through_two_rounds(tiny_model_dir, tmp_path, monkeypatch):
    from tinygpt.runtime.contracts.io import read_any, read_json
    from tinygpt.runtime.contracts.trajectory import Trajectory
    from tinygpt.runtime.demo.loop import DemoConfig, TrainSettings, run_demo
    from tinygpt.runtime.demo.report import DemoSummary

    home, work = _toy_home(tmp_path, monkeypatch, "demo")
    cfg = DemoConfig(work=str(work), task="weather", entry="toyweather:Weather", model=str(tiny_model_dir), name="weather",
                     project="demo-test", tasks=3, attempts=2, test_tasks=2, gate_tasks=2, rounds=2, concurrency=4,
                     session_idle=1.0, train=TrainSettings(steps=2, batch_size=2, num_layers=2))
    said: list[str] = []
    summary = run_demo(cfg, say=said.append)
    assert summary == read_json(work / "demo-summary.json", DemoSummary)
    assert summary.daemon["exit_code"] == 0  # up stopped cleanly on SIGTERM

    # Two rounds, each one build the daemon ran by itself and hot-swapped in.
    assert [r.promoted for r in summary.rounds] == ["weather@1", "weather@2"], said
    r1, r2 = summary.rounds
    assert r1.collection.collected_with == tiny_model_dir.name and r2.collection.collected_with == "weather@1"
    for r in summary.rounds:
        assert r.collection.episodes == 6 and r.rows >= 1
        b = r.build
        assert b.verdict == "pass" and b.numbers and b.numbers[0].startswith("weather-held-out accuracy")
        # No forgetting: the shipped general tool-calling suite gates every demo build too.
        assert any(n.startswith("general-tools") for n in b.numbers), b.numbers
        # The environment suite's results per task kind, both sides of the gate.
        assert set(b.per_kind["candidate"]) == set(b.per_kind["baseline"]) == {"a", "b"}
        assert set(b.seconds) == {"dataset", "finetune", "gate", "publish", "swap"}
    # Round 2 trained on everything kept so far (round 1's rows and its own).
    assert r2.build.rows >= r1.build.rows
    assert set(summary.seconds) >= {"start", "before", "collect", "settle", "build_dataset", "build_finetune", "build_gate",
                                    "build_publish", "swap", "after", "total"}
    assert summary.peak_rss_mb and summary.peak_rss_mb > 50
    # Before on the base model, after on the specialist, the same held-out tasks, paired.
    assert summary.before.served_by == tiny_model_dir.name and summary.after.served_by == "weather@2"
    assert summary.before.n == summary.after.n == 2 and summary.paired is not None
    assert set(summary.before.per_kind) == {"a", "b"}

    # The daemon recorded everything; only collection sessions (tagged) were selected for training.
    records = [read_any(p, Trajectory) for p in (home / "trajectories").glob("*.msgpack")]
    seen = Counter((t.steps[0].metadata.get("demo"), t.steps[0].model, t.steps[0].adapter_version) for t in records)
    assert seen == {("collect", "base", None): 6, ("collect", "weather", "1"): 6, ("held-out", "base", None): 2,
                    ("held-out", "weather", "2"): 2}
    # Published into the demo's registry, gated, and up stopped cleanly.
    assert (home / "demo" / "specialists" / "weather" / "2" / "lock.json").is_file()
    log = (work / "up.log").read_text()
    assert "Autopilot: weather: the gate passed; published weather@1" in log and "Specialists: swapped weather 1 -> 2" in log
    # Each round's rows reached the threshold the demo set for it (the rows a round keeps
    # depend on what the random model sampled).
    builds = re.findall(r"Autopilot: weather: (\d+) new rows \(≥ (\d+)\): building", log)
    assert len(builds) == 2 and all(int(n) >= int(at) >= 1 for n, at in builds), builds
    assert int(builds[0][0]) == r1.build.rows
    pins = json.loads((work / "tinygpt.project.json").read_text())
    assert pins["specialists"][0].get("version", "*") == "*" and pins["eval_suites"][0]["kind"] == "environment"


def test_failed_runs_train_through_the_daemon_as_hindsight_relabels(tiny_model_dir, tmp_path, monkeypatch):
    """A random model seldom asks for the right city; `--hindsight` records the failed runs
    again under the city they did ask for, and the daemon's build trains on those rows."""
    from tinygpt.runtime.contracts.io import read_any
    from tinygpt.runtime.contracts.trajectory import HINDSIGHT_SEPARATOR, Trajectory
    from tinygpt.runtime.demo.loop import DemoConfig, TrainSettings, run_demo

    home, work = _toy_home(tmp_path, monkeypatch, "demo")
    cfg = DemoConfig(work=str(work), task="weather", entry="toyweather:StrictWeather", model=str(tiny_model_dir),
                     name="weather", project="demo-hindsight", tasks=4, attempts=2, test_tasks=2, gate_tasks=2, rounds=1,
                     concurrency=4, session_idle=1.0, hindsight=True, train=TrainSettings(steps=2, batch_size=2, num_layers=2))
    summary = run_demo(cfg, say=lambda _: None)
    c = summary.rounds[0].collection
    assert c.relabeled >= 1 and c.relabeled + c.successes <= c.episodes == 8
    assert sum(c.relabeled_per_kind.values()) == c.relabeled
    assert summary.rounds[0].build is not None and summary.rounds[0].build.rows >= 1
    relabels = [read_any(p, Trajectory) for p in (home / "trajectories").glob(f"*{HINDSIGHT_SEPARATOR}*.msgpack")]
    assert len(relabels) == c.relabeled
    # Recorded under the collection's tag (the build policy selects them), reward 1 from the checker.
    assert all(t.steps[0].metadata == {"demo": "collect"} and t.feedback[0].reward == 1.0 for t in relabels)
    # What the daemon trained on includes relabeled rows.
    rows = [json.loads(line) for p in (home / "datasets").rglob("*.jsonl") if p.name in ("train.jsonl", "valid.jsonl")
            for line in p.read_text().splitlines()]
    assert any(HINDSIGHT_SEPARATOR in r["trajectory_id"] for r in rows)


def test_demo_drives_a_running_daemon_at_url(tiny_model_dir, tmp_path, monkeypatch):
    """--url: an operator's `tinygpt up` already runs with its own policy; the demo only sends
    episodes and feedback, waits for the version the daemon promotes, and measures."""
    from tests.daemon_support import Up
    from tinygpt.runtime.demo.loop import DemoConfig, run_demo
    from tinygpt.runtime.demo.project import write_project

    home, ops = _toy_home(tmp_path, monkeypatch, "ops")
    # The operator's policy: build once 2 new rows are kept (of 3 tasks x 2 attempts; how
    # many a random model's episodes keep is luck, and a policy never met would never build).
    write_project(ops / "tinygpt.project.json", project="ops", model=str(tiny_model_dir), task="weather", name="weather", seed=0,
                  test_tasks=2, gate_tasks=2, training={"steps": 2, "batch_size": 2, "num_layers": 2, "eval_every": 0},
                  builds_started=0, release_rows=2, entry="toyweather:Weather")
    up = Up(home, ops, "--project", str(ops / "tinygpt.project.json"), "--session-idle", "1")
    try:
        url = up.wait(r"Runtime: (http://\S+/v1)").group(1)
        work = tmp_path / "demo"
        work.mkdir()
        (work / "toyweather.py").write_text(textwrap.dedent(TOY))
        # No concurrency given: sized by the daemon's device (/health), a CPU here.
        cfg = DemoConfig(work=str(work), url=url, task="weather", entry="toyweather:Weather", name="weather", tasks=3, attempts=2,
                         test_tasks=2, gate_tasks=2)
        said: list[str] = []
        summary = run_demo(cfg, say=said.append)
        assert any("; 8 sessions at once;" in m for m in said), said
    finally:
        assert up.stop() == 0, up.text
    (r,) = summary.rounds
    assert r.promoted == "weather@1" and r.build.verdict == "pass" and r.build.rows >= 2
    assert summary.after.served_by == "weather@1" and summary.peak_rss_mb is None
    assert not (work / "tinygpt.project.json").exists()  # the daemon's own project file rules
    assert re.search(r"Autopilot: weather: \d+ new rows \(≥ 2\): building", up.text), up.text


def test_demo_command_refuses_bad_options(capsys):
    from tinygpt.runtime.commands import demo

    assert demo.run(_demo_args(tasks=0)) == 2
    assert "--tasks must be at least 1" in capsys.readouterr().err
    assert demo.run(_demo_args(temperature=0)) == 2
    assert "--temperature" in capsys.readouterr().err
    assert demo.run(_demo_args(explore=1.5)) == 2
    assert "--explore" in capsys.readouterr().err


def test_demo_stops_cleanly_when_nothing_succeeds(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The shop environment on a random model: nothing is solved, the daemon keeps no rows,
    the demo stops with the reason and `up` is stopped."""
    from tinygpt.runtime.commands import demo

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    work = tmp_path / "demo"
    args = _demo_args(task="shop", model=tiny_model_dir, work=work, tasks=2, attempts=1, test_tasks=1, gate_tasks=1,
                      max_turns=1, concurrency=2)
    assert demo.run(args) == 1
    err = capsys.readouterr().err
    assert "the loop stopped" in err and "no training rows" in err
    summary = json.loads((work / "demo-summary.json").read_text())
    assert summary["rounds"][0]["collection"]["successes"] == 0 and summary["after"] is None
    assert "no training rows" in summary["note"] and summary["peak_rss_mb"] > 0
    assert json.loads((work / "tinygpt.project.json").read_text())["registries"][0].endswith("demo/specialists")


def test_the_paired_sign_test():
    from tinygpt.runtime.demo.report import Score, paired
    from tinygpt.workers.evalgate.stats import sign_test

    assert sign_test(7, 0) == 2 / 2**7  # the default-model demo run: 7 tasks gained, none lost

    def score(solved):
        return Score(model="m", served_by="m", n=5, successes=len(solved), success_rate=len(solved) / 5, ci95=(0, 1), solved=solved)

    kinds = {"a": "x", "b": "x", "c": "y", "d": "y", "e": "x"}
    p = paired(score(["a", "b", "c"]), score(["b", "c", "d", "e"]), kinds)
    assert (p.gained, p.lost) == (2, 1) and p.p_value == 1.0
    assert p.per_kind == {"x": (1, 1), "y": (1, 0)}


@pytest.mark.parametrize("stale", ["runtime.demo.pipeline", "runtime.demo.agent", "runtime.demo.specialist"])
def test_the_demo_runs_no_pipeline_of_its_own(stale):
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"tinygpt.{stale}")
