"""An environment's held-out split as an eval-gate suite, on the tiny model.

A toy environment defined in this file (the project names it by entry point) asks for
the weather in a city; its checker accepts the first call that matches what a random
LoRA adapter ("good") calls greedily, recorded once through the gate itself. So "good"
solves every task, and the same LoRA with its B matrices negated ("worse") solves fewer:
good over worse passes, worse over good is a regression, decided by the exact McNemar
test on the tasks that flipped, with success reported per task kind.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

import mlx.core as mx

from tests.serving_support import write_lora_adapter
from tinygpt.workers.evalgate.rows import GateInputError
from tinygpt.workers.evalgate.stats import mcnemar
from tinygpt.workers.evalgate import evaluate_gate

TOY = '''
import json
from pathlib import Path

from tinygpt.runtime.environments import Environment, EnvTask, Reward, tool

CITIES = ["Paris", "Berlin", "London", "Rome", "Madrid", "Oslo", "Vienna", "Prague", "Lisbon", "Dublin", "Athens", "Warsaw"]
EXPECTED = Path(__file__).with_name("expected.json")


class Toy(Environment):
    tools = [tool("get_weather", "Weather in a city.", {"city": {"type": "string", "enum": CITIES}})]
    max_turns = 1
    max_tokens = 128
    seen = {}  # task id -> the first call's arguments (what the test records)

    def tasks(self, split, n, seed):
        pool = CITIES[:6] if split == "train" else CITIES[6:] + CITIES[:6]
        return [EnvTask(id=f"{split}-{i}", kind="ab"[i % 2], messages=[{"role": "user", "content": f"{split} {i}: weather in {pool[i % 12]}?"}])
                for i in range(n)]

    def reset(self, task):
        return {}

    def step(self, state, name, arguments):
        return {"ok": True, "forecast": "sunny"}

    def score(self, task, state, transcript):
        args = transcript.calls[0].arguments if transcript.calls else None
        Toy.seen[task.id] = args
        expected = json.loads(EXPECTED.read_text()) if EXPECTED.is_file() else {}
        ok = args is not None and expected.get(task.id) == args
        return Reward(reward=1.0 if ok else 0.0, reason="right city" if ok else f"called {args}")
'''


def _resave(src: Path, dst: Path, transform) -> Path:
    shutil.copytree(src, dst)
    weights = mx.load(str(src / "adapters.safetensors"))
    mx.save_safetensors(str(dst / "adapters.safetensors"), {k: transform(k, v) for k, v in weights.items()})
    return dst


def _project(root: Path, model: Path, suite: dict) -> Path:
    doc = {"name": "env-gate", "base_model": str(model), "environments": [{"name": "toy", "entry": "toyenv_gate:Toy"}],
           "eval_suites": [suite], "gate": {"cache": False}}
    (root / "tinygpt.project.json").write_text(json.dumps(doc))
    return root / "tinygpt.project.json"


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYGPT_HOME", str(tmp_path_factory.mktemp("env-gate-home")))
        root = tmp_path_factory.mktemp("env-gate")
        (root / "toyenv_gate.py").write_text(textwrap.dedent(TOY))
        good = write_lora_adapter(root / "adapters" / "good", tiny_model_dir, seed=3, std=0.2)
        worse = _resave(good, root / "adapters" / "worse", lambda k, v: -v if k.endswith("lora_b") else v)
        suite = {"name": "toy-heldout", "kind": "environment", "environment": "toy", "options": {"tasks": 12}}
        project = _project(root, tiny_model_dir, suite)
        # Golden answers: what "good" calls, through the same gate path.
        said = evaluate_gate(project, candidate=good, baseline="none")
        import sys

        seen = sys.modules["toyenv_gate"].Toy.seen
        assert said.candidate.suites[0].n == 12 and len(seen) == 12
        (root / "expected.json").write_text(json.dumps({k: v for k, v in seen.items()}))
        yield {"root": root, "project": project, "good": good, "worse": worse}


def test_a_better_adapter_passes_and_a_worse_one_fails_per_task_kind(world):
    better = evaluate_gate(world["project"], candidate=world["good"], baseline=str(world["worse"]))
    worse = evaluate_gate(world["project"], candidate=world["worse"], baseline=str(world["good"]))
    assert better.verdict == "pass", better.message
    assert worse.verdict == "regression", worse.message
    (v,) = worse.suites
    cand, base = worse.candidate.suite("toy-heldout"), worse.baseline.suite("toy-heldout")
    assert base.mean == 1.0 and cand.mean < 1.0
    # Paired on the same task ids: the exact McNemar test of evalgate.stats, nothing re-implemented.
    flips = {i.id: i.score for i in cand.items}
    lost = sum(1 for i in base.items if i.score > flips[i.id])
    assert v.p_value == mcnemar(0, lost, 12).p_value and not v.passed
    # Results per task kind, both sides.
    assert set(base.per_kind) == {"a", "b"} and all(k.n == 6 and k.mean == 1.0 for k in base.per_kind.values())
    assert sum(k.mean * k.n for k in cand.per_kind.values()) == pytest.approx(cand.mean * 12)
    assert all(i.detail.split(":")[0] in ("a", "b") for i in cand.items)


def test_an_unknown_environment_or_bad_options_is_a_clear_input_error(world, tiny_model_dir, tmp_path):
    shutil.copy(world["root"] / "toyenv_gate.py", tmp_path / "toyenv_gate.py")
    cases = [
        ({"environment": "nope"}, "no environment 'nope'"),
        ({"environment": "toy", "options": {"tasks": 0}}, "options.tasks must be an integer of at least 1"),
        ({"environment": "toy", "options": {"entry": "os:system"}}, "unknown option(s) entry"),
        ({}, "needs `environment`"),
        ({"environment": "toy", "data": "rows.jsonl"}, "`data` is not for kind"),
    ]
    for extra, message in cases:
        project = _project(tmp_path, tiny_model_dir, {"name": "s", "kind": "environment", **extra})
        with pytest.raises(GateInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            evaluate_gate(project, candidate=world["good"])


def test_the_eval_gate_command_prints_success_per_task_kind(world, capsys):
    from tinygpt.runtime.commands import eval_gate

    parser = __import__("argparse").ArgumentParser()
    eval_gate.configure(parser)
    out = world["root"] / "cli-gate.json"
    code = eval_gate.run(parser.parse_args(["--project", str(world["project"]), "--candidate", str(world["worse"]),
                                            "--baseline", str(world["good"]), "--out", str(out)]))
    printed = capsys.readouterr().out
    assert code == 1 and "REGRESSION" in printed
    assert "per task kind (baseline → candidate): a 100% →" in printed and "(n=6)" in printed
