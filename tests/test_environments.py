"""Environments: a toy environment defined here runs, trains, gates and publishes through real
workers; broken environments fail their job with a clear reason; the bundled ones check out.

A random tiny model solves nothing on purpose, so the toy's checker rewards every episode
that made a call: what is tested is the plumbing (episodes through the runtime, feedback,
queue, dataset, training, the held-out gate, publish, rounds, exploration), not an
improvement. The improvement on the real model is in benchmarks/RESULTS.md ("environments").
"""

from __future__ import annotations

import json

import msgspec
import pytest
from rq.job import Job, JobStatus

from tinygpt.queue import stages
from tinygpt.queue.serializer import MsgpackSerializer
from tinygpt.queue.worker import PipelineWorker
from tinygpt.runtime.contracts import read_json
from tinygpt.runtime.contracts.environments import EnvRunRecord, EnvRunSettings, EnvTrainSettings, HeldOut
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.jobs import EnvironmentJob
from tinygpt.runtime.contracts.project import ProjectPins
from tinygpt.runtime.contracts.trajectory import Trajectory
from tinygpt.runtime.environments import Environment, EnvTask, Reward, tool
from tinygpt.runtime.environments import runner
from tinygpt.workers.environment.rounds import gate_verdict
from tinygpt.runtime.environments.loader import EnvironmentBroken, instantiate, load


class Toy(Environment):
    """Two tools; a task asks for one of them. Every episode with a call is rewarded (see module doc)."""

    tools = [tool("ping", "Ping a host.", {"host": {"type": "string", "maxLength": 8}}),
             tool("pong", "Answer a ping.", {"n": {"type": "integer", "minimum": 0, "maximum": 9}})]
    max_turns = 2
    max_tokens = 48

    def tasks(self, split, n, seed):
        return [EnvTask(id=f"{split}-{seed}-{i}", kind=("ping", "pong")[i % 2],
                        messages=[{"role": "user", "content": f"{split} task {i}: call {('ping', 'pong')[i % 2]}"}])
                for i in range(n)]

    def reset(self, task):
        return {"calls": []}

    def step(self, state, name, arguments):
        state["calls"].append(name)
        return {"ok": True, "echo": arguments}

    def score(self, task, state, transcript):
        assert [c.name for c in transcript.calls] == state["calls"]
        return Reward(reward=1.0 if state["calls"] else 0.0, reason=f"called {state['calls']}")


class CheckerRaises(Toy):
    def score(self, task, state, transcript):
        return 1 / 0


class RewardTooBig(Toy):
    def score(self, task, state, transcript):
        return Reward(reward=1.5, reason="generous")


class SameTasksBothSplits(Toy):
    def tasks(self, split, n, seed):
        return super().tasks("train", n, seed)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_project(root, model, **extra):
    envs = [{"name": "toy", "entry": "tests.test_environments:Toy"},
            {"name": "toy-raises", "entry": "tests.test_environments:CheckerRaises"},
            {"name": "toy-too-big", "entry": "tests.test_environments:RewardTooBig"},
            {"name": "toy-leaks", "entry": "tests.test_environments:SameTasksBothSplits"},
            {"name": "toy-missing", "entry": "tests.no_such_module:Env"},
            {"name": "toy-ping", "entry": "tests.test_hindsight:PingTo"}]
    doc = {"name": "envtest", "base_model": str(model), "registries": ["registry"], "environments": envs, **extra}
    (root / "tinygpt.project.json").write_text(json.dumps(doc))
    return root / "tinygpt.project.json"


def settings(**overrides) -> EnvRunSettings:
    base = dict(environment="toy", specialist="toy-agent", train_tasks=3, test_tasks=2, attempts=2, explore=0.5, rounds=2,
                temperature=0.8, concurrency=4, gate="no-worse",
                train=EnvTrainSettings(steps=2, batch_size=2, num_layers=2))
    return EnvRunSettings(**{**base, **overrides})


def run_jobs(conn, payloads):
    ids = []
    for i, payload in enumerate(payloads):
        job_id = f"environment-test-{i}"
        stages.enqueue(conn, "environment", payload, job_id=job_id)
        ids.append(job_id)
    worker = PipelineWorker([stages.get_queue(conn, "train")], connection=conn, heartbeat_s=0.5, drain=True, maintenance_interval=1)
    worker.work(burst=True, logging_level="WARNING")
    return [Job.fetch(i, connection=conn, serializer=MsgpackSerializer) for i in ids]


def test_a_toy_environment_runs_trains_gates_and_publishes_through_workers(tmp_path, home, tiny_model_dir, redis_client):
    project = write_project(tmp_path, tiny_model_dir)
    work = tmp_path / "run"
    (job,) = run_jobs(redis_client, [EnvironmentJob(project_file=str(project), settings=settings(), work_dir=str(work))])
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string
    record = read_json(work / "env-run.json", EnvRunRecord)
    assert record == job.return_value()
    assert record.baseline.n == 2 and set(record.baseline.per_kind) == {"ping", "pong"}
    assert len(record.rounds) == 2
    first, second = record.rounds
    # Round 1 collects with the base model; it passes the gate, so round 2 collects with the specialist.
    assert first.collected_with == tiny_model_dir.name and first.promoted == "toy-agent@1"
    assert second.collected_with == "toy-agent" and second.promoted == "toy-agent@2"
    # Each round's dataset holds every episode kept so far (round 1's and its own).
    assert second.rows >= first.rows
    for r in record.rounds:
        assert r.attempts == 6 and r.explored == 3 and r.rows >= 1 and r.method == "lora"
        assert sum(c.n for c in r.per_kind.values()) == 6
        assert r.gate.verdict == "pass" and r.gate.candidate.n == r.gate.baseline.n == 2
        assert set(r.seconds) == {"collect", "pipeline", "train", "gate", "publish"}
    assert record.final.model == "toy-agent"
    # Published through the publish stage, with the gate's result for exactly those weights.
    assert (tmp_path / "registry" / "toy-agent" / "2" / "lock.json").is_file()
    gate = json.loads((work / "round-1" / "gate-result.json").read_text())
    assert gate["verdict"] == "pass" and gate["extra"]["subject"] == "toy-agent" and gate["suites"][0]["suite"] == "env:toy"

    sessions = [read_any(p, Trajectory) for p in (work / "trajectories").glob("*.msgpack")]
    collected = [t for t in sessions if t.feedback and t.feedback[0].source == "env:toy" and t.steps[0].sampling.temperature > 0]
    assert len(collected) == 12 and len(sessions) == 12 + 2 + 2 * 2 * 1  # collection, baseline, candidate per round
    # Exploration constrains decoding only: forced episodes called the forced tool, and their
    # recorded prompt is a free episode's: three training tasks, three distinct first prompts.
    assert len({tuple(t.steps[0].prompt_ids) for t in collected}) == 3
    assert all(f.reward in (0.0, 1.0) for t in collected for f in t.feedback)


def test_a_run_whose_episodes_all_fail_trains_on_their_hindsight_relabels(tmp_path, home, tiny_model_dir, redis_client):
    # PingTo asks for hosts a random model never pings: every row comes from a relabel.
    project = write_project(tmp_path, tiny_model_dir)
    work = tmp_path / "run"
    s = settings(environment="toy-ping", specialist="ping-agent", rounds=1, explore=0.0, hindsight=True)
    (job,) = run_jobs(redis_client, [EnvironmentJob(project_file=str(project), settings=s, work_dir=str(work))])
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string
    (rnd,) = read_json(work / "env-run.json", EnvRunRecord).rounds
    assert rnd.successes == 0 and rnd.relabeled >= 1 and rnd.rows >= 1
    sessions = [read_any(p, Trajectory) for p in (work / "trajectories").glob("*.msgpack")]
    relabels = [t for t in sessions if t.hindsight_of]
    assert len(relabels) == rnd.relabeled and all(t.feedback[0].reward == 1.0 for t in relabels)
    # Held-out episodes (greedy) are never relabeled: only collection episodes are.
    originals = {t.id: t for t in sessions}
    assert all(originals[t.hindsight_of].steps[0].sampling.temperature > 0 for t in relabels)


def test_exploration_forces_the_named_tool(tiny_model_dir, tmp_path):
    from tests.serving_support import running
    from tinygpt.workers.environment.rounds import _client

    env = Toy()
    tasks = env.tasks("train", 2, 0)
    plan = runner.exploration_plan(tasks, runner.tool_names(env), attempts=3, explore=1.0)
    with running(tiny_model_dir, tmp_path) as rt:
        cfg = runner.Sampling(model="base", temperature=0.9, max_turns=1, max_tokens=48, seed=1)
        results = runner.run_many(_client(rt.url), env, "toy", plan, cfg, concurrency=3)
    for job, result in zip(plan, results):
        assert result.forced_tool == job.force
        if result.calls:  # a random model may ramble past max_tokens inside an argument
            assert result.calls[0] == job.force


def test_a_forced_tool_choice_is_trained_as_the_choice_not_masked(tiny_model_dir, tmp_path):
    # The name a named tool_choice forced is recorded as steered and trained in a kept
    # trajectory (what exploration found), while a free call's forced skeleton stays context.
    from tests.serving_support import running
    from tinygpt.workers.environment.rounds import _client
    from tinygpt.workers.tokens import sequences

    messages = [{"role": "user", "content": "call pong"}]
    with running(tiny_model_dir, tmp_path) as rt:
        client = _client(rt.url)
        for i, choice in enumerate([{"type": "function", "function": {"name": "pong"}}, "required"]):
            client.chat.completions.create(model="base", messages=messages, tools=Toy.tools, tool_choice=choice,
                                           max_tokens=40, temperature=0.0, extra_headers={runner.SESSION_HEADER: f"s{i}"})
        decode = rt.completions.prompts.decode
    named, free = sorted((read_any(p, Trajectory) for p in (tmp_path / "trajectories").glob("*.msgpack")),
                         key=lambda t: t.session)
    step = named.steps[0]
    assert step.steered and set(step.steered) <= set(step.forced)
    assert "pong" in decode([step.output_ids[i] for i in step.steered])
    (seq,) = sequences(named)
    start = len(step.prompt_ids)
    assert all(seq.loss_mask[start + i] == 1 for i in step.steered)
    assert free.steps[0].forced and not free.steps[0].steered
    (seq,) = sequences(free)
    assert all(seq.loss_mask[len(free.steps[0].prompt_ids) + i] == 0 for i in free.steps[0].forced)


class Guided(Toy):
    """Names a two-call sequence per task: pong then ping for a ping task, ping twice for a pong task."""

    def plan(self, task):
        return ["pong", "ping"] if task.kind == "ping" else ["ping", "ping"]


def test_a_guided_exploration_forces_each_turn_of_the_plan(tiny_model_dir, tmp_path):
    from tests.serving_support import running
    from tinygpt.workers.environment.rounds import _client

    env = Guided()
    tasks = env.tasks("train", 2, 0)
    plan = runner.exploration_plan(tasks, runner.tool_names(env), attempts=2, explore=0.5, env=env)
    assert [a.plan for a in plan] == [(), ("pong", "ping"), (), ("ping", "ping")]
    with running(tiny_model_dir, tmp_path) as rt:
        cfg = runner.Sampling(model="base", temperature=0.9, max_turns=2, max_tokens=48, seed=1)
        results = runner.run_many(_client(rt.url), env, "guided", plan, cfg, concurrency=2)
    guided = [(job, r) for job, r in zip(plan, results) if job.plan]
    assert all(r.plan == list(job.plan) and r.forced_tool == job.plan[0] for job, r in guided)
    # A random model may ramble past max_tokens inside an argument (no call, episode over);
    # every call it did make is the plan's tool for that turn.
    assert any(r.calls for _, r in guided)
    for job, r in guided:
        assert r.calls == list(job.plan[: len(r.calls)])


@pytest.mark.parametrize("steps, message", [
    (["ping", "shout"], "names tools it does not offer: shout"),
    ("ping", "must return a list of tool names"),
    ([1], "must return a list of tool names"),
])
def test_a_plan_naming_what_the_environment_lacks_stops_the_run(steps, message):
    class Bad(Toy):
        def plan(self, task):
            return steps

    with pytest.raises(EnvironmentBroken, match=message):
        runner.exploration_plan(Bad().tasks("train", 1, 0), ["ping", "pong"], 2, 0.5, env=Bad(), env_name="bad")


def test_a_plan_that_raises_names_the_environment_and_an_unplanned_task_cycles_tools():
    class Raises(Toy):
        def plan(self, task):
            raise KeyError("solution")

    with pytest.raises(EnvironmentBroken, match="environment 'bad': plan raised KeyError"):
        runner.exploration_plan(Toy().tasks("train", 1, 0), ["ping", "pong"], 2, 0.5, env=Raises(), env_name="bad")
    plan = runner.exploration_plan(Toy().tasks("train", 2, 0), ["ping", "pong"], 2, 0.5, env=Toy())
    assert [(a.force, a.plan) for a in plan] == [(None, ()), ("ping", ()), (None, ()), ("pong", ())]
    # No exploring attempt: the plan is never asked for.
    assert all(not a.plan for a in runner.exploration_plan(Toy().tasks("train", 2, 0), ["ping"], 2, 0.0, env=Raises()))


def test_the_bundled_plans_are_the_reference_solutions_tools():
    from tinygpt.runtime.environments.bundled.fileops import FileOps
    from tinygpt.runtime.environments.bundled.shop import KINDS, Shop

    fileops = FileOps()
    for task in fileops.tasks("train", 12, 0):
        assert fileops.plan(task) == [c["name"] for c in task.data["solution"]]
    assert {tuple(fileops.plan(t)) for t in fileops.tasks("train", 12, 0) if t.kind == "copy"} == {("read_file", "write_file")}
    shop = Shop()
    names = set(runner.tool_names(shop))
    tasks = shop.tasks("train", 10, 0)
    assert {t.kind for t in tasks} == set(KINDS)
    assert all(shop.plan(t) and set(shop.plan(t)) <= names for t in tasks)


def test_exploration_plan_cycles_tools_and_keeps_free_attempts():
    tasks = Toy().tasks("train", 3, 0)
    plan = runner.exploration_plan(tasks, ["a", "b", "c"], attempts=4, explore=0.5)
    assert len(plan) == 12
    per_task = [plan[i * 4:(i + 1) * 4] for i in range(3)]
    for i, attempts in enumerate(per_task):
        assert [a.force for a in attempts[:2]] == [None, None]
        assert [a.force for a in attempts[2:]] == [["a", "b", "c"][(i + e) % 3] for e in range(2)]
        assert [a.require_more for a in attempts] == [False, False, False, True]
    assert all(a.force is None for a in runner.exploration_plan(tasks, ["a"], 4, 0.0))


def _held(model, solved, n=6):
    return HeldOut(model=model, n=n, successes=len(solved), success_rate=len(solved) / n, solved=solved)


def test_gate_rules_are_paired():
    s = settings(gate="better")
    assert gate_verdict(s, _held("b", ["1", "2"]), _held("c", ["1", "2", "3"])).verdict == "pass"
    same = gate_verdict(s, _held("b", ["1", "2"]), _held("c", ["1", "3"]))
    assert (same.verdict, same.gained, same.lost) == ("regression", 1, 1)
    assert gate_verdict(settings(gate="no-worse"), _held("b", ["1"]), _held("c", ["2"])).verdict == "pass"
    assert gate_verdict(settings(gate="no-worse"), _held("b", ["1", "2"]), _held("c", [])).verdict == "regression"
    # Six tasks gained, none lost: p = 2/64 < 0.05; three gained: p = 0.25, not significant.
    sig = settings(gate="better", alpha=0.05)
    assert gate_verdict(sig, _held("b", []), _held("c", list("123456"))).verdict == "pass"
    assert gate_verdict(sig, _held("b", []), _held("c", list("123"))).verdict == "regression"


def test_broken_environments_fail_their_job_with_the_reason(tmp_path, home, tiny_model_dir, redis_client):
    project = write_project(tmp_path, tiny_model_dir)
    names = ["toy-missing", "toy-raises", "toy-too-big", "toy-leaks", "not-declared"]
    jobs = run_jobs(redis_client, [EnvironmentJob(project_file=str(project), settings=settings(environment=n, rounds=1),
                                                  work_dir=str(tmp_path / n)) for n in names])
    reasons = {}
    for name, job in zip(names, jobs):
        assert job.get_status() == JobStatus.FAILED, name
        assert job.retries_left == 0  # permanent: retrying cannot fix a broken environment
        reasons[name] = job.latest_result().exc_string.strip().splitlines()[-1]
    assert "cannot import 'tests.no_such_module'" in reasons["toy-missing"]
    assert "score raised ZeroDivisionError" in reasons["toy-raises"]
    assert "reward 1.5, outside [0, 1]" in reasons["toy-too-big"]
    assert "train and test splits share" in reasons["toy-leaks"]
    assert "no environment 'not-declared'" in reasons["not-declared"]
    # Nothing else happened: no dataset, no adapter, nothing published.
    assert not (tmp_path / "registry").exists() and not list(tmp_path.glob("*/round-1/adapter"))
    record = read_json(tmp_path / "toy-raises" / "env-run.json", EnvRunRecord)
    assert "ZeroDivisionError" in record.note and record.rounds == []


def test_the_job_names_the_environment_only():
    with pytest.raises(msgspec.ValidationError, match="entry"):
        msgspec.convert({"project_file": "p", "work_dir": "w", "entry": "os:system",
                         "settings": {"environment": "toy", "specialist": "t"}}, EnvironmentJob)


def test_project_file_declares_environments(tmp_path):
    pins = msgspec.convert({"name": "p", "environments": [{"name": "shop", "entry": "my_pkg.shop:Shop"}]}, ProjectPins)
    assert pins.environment("shop").entry == "my_pkg.shop:Shop" and pins.environment("other") is None
    with pytest.raises(msgspec.ValidationError, match="entry"):
        msgspec.convert({"name": "p", "environments": [{"name": "shop", "entry": "import os; os.system('x')"}]}, ProjectPins)
    with pytest.raises(msgspec.ValidationError, match="duplicate"):
        msgspec.convert({"name": "p", "environments": [{"name": "a", "entry": "m:A"}, {"name": "a", "entry": "m:B"}]}, ProjectPins)


def test_a_users_module_next_to_the_project_file_loads(tmp_path):
    (tmp_path / "my_env_mod.py").write_text(
        "from tinygpt.runtime.environments import Environment, tool\n"
        "class Env(Environment):\n    tools = [tool('t', 'T.', {})]\n"
    )
    (tmp_path / "tinygpt.project.json").write_text(json.dumps({"name": "p", "environments": [{"name": "mine", "entry": "my_env_mod:Env"}]}))
    env = load(tmp_path / "tinygpt.project.json", "mine")
    assert runner.tool_names(env) == ["t"]
    with pytest.raises(EnvironmentBroken, match="tasks raised NotImplementedError"):
        runner.get_tasks(env, "mine", "train", 2, 0)
    (tmp_path / "bad_tools.py").write_text("class Env:\n    tools = [{'name': 'x'}]\n"
                                           "    def tasks(self): pass\n    def reset(self): pass\n    def step(self): pass\n    def score(self): pass\n")
    with pytest.raises(EnvironmentBroken, match=r"tools\[0\] is not"):
        instantiate("bad_tools:Env", tmp_path)


@pytest.mark.parametrize("name", ["fileops", "shop"])
def test_bundled_environments_split_disjointly_and_their_reference_solutions_pass(name):
    from tinygpt.runtime.contracts.environments import ToolCallRecord, Transcript
    from tinygpt.runtime.environments.loader import BUNDLED

    env = instantiate(BUNDLED[name])
    train, test = runner.split_tasks(env, name, 40, 40, 0)
    assert len({t.kind for t in train}) >= 5 and {t.kind for t in train} == {t.kind for t in test}
    for task in test[:15]:
        state = env.reset(task)
        calls = []
        for name_, args in _solution(name, task, env, state):
            calls.append(ToolCallRecord(name=name_, arguments=args, result=env.step(state, name_, args), raw_arguments=json.dumps(args)))
        reward = env.score(task, state, Transcript(calls=calls, answer="Done.", finished=True, turns=len(calls) + 1))
        assert reward.reward == 1.0, (task.messages[-1]["content"], reward.reason)
        idle = env.score(task, env.reset(task), Transcript(answer="Done.", finished=True, turns=1))
        assert idle.reward == 0.0 and idle.reason


def _solution(name, task, env, state):
    if name == "fileops":
        for call in task.data["solution"]:
            yield call["name"], call["arguments"]
        return
    want, start = task.data["expected"], task.data["cart"]
    if task.kind == "find_add":
        product = task.data["catalogue"][next(iter(want["cart"]))]
        hits = env.step(state, "search_products", {"query": product})["results"]
        yield "add_to_cart", {"product_id": hits[0]["product_id"], "quantity": 1}
    elif task.kind == "add":
        (pid, qty), = want["cart"].items()
        yield "add_to_cart", {"product_id": pid, "quantity": qty}
    elif task.kind == "remove":
        (pid,) = set(start) - set(want["cart"])
        yield "remove_from_cart", {"product_id": pid}
    elif task.kind == "buy":
        (pid, qty), = want["orders"][0]["items"].items()
        yield "add_to_cart", {"product_id": pid, "quantity": qty}
        yield "place_order", {"address": want["orders"][0]["address"]}
    else:
        yield "place_order", {"address": want["orders"][0]["address"]}


def test_shop_refuses_what_a_shop_would():
    from tinygpt.runtime.environments.bundled.shop import Shop

    env = Shop()
    task = next(t for t in env.tasks("test", 10, 1) if t.kind == "add")
    state = env.reset(task)
    assert env.step(state, "add_to_cart", {"product_id": "nope", "quantity": 1})["ok"] is False
    assert "quantity" in env.step(state, "add_to_cart", {"product_id": next(iter(state["catalogue"])), "quantity": 0})["error"]
    assert env.step(state, "place_order", {"address": "1 Road"}) == {"ok": False, "error": "the cart is empty"}
    assert env.step(state, "remove_from_cart", {"product_id": "x"})["ok"] is False
    assert env.step(state, "format_disk", {})["ok"] is False


def test_env_command_checks_and_lists(tmp_path, home, tiny_model_dir, capsys, monkeypatch):
    from tinygpt.runtime import cli

    write_project(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["env", "check", "toy", "--tasks", "2"]) == 0
    out = capsys.readouterr().out
    assert "success per kind: ping" in out and "train-0-0" in out
    assert cli.main(["env", "check", "toy-raises", "--tasks", "1"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert cli.main(["env", "list"]) == 0
    out = capsys.readouterr().out
    assert "toy-missing" in out and "broken" in out and "shop" in out
    assert cli.main(["env", "run", "toy", "--tasks", "0"]) == 2
    assert "train_tasks must be at least 1" in capsys.readouterr().err


def test_env_command_without_a_project_file_exits_2(tmp_path, monkeypatch, capsys):
    from tinygpt.runtime import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["env", "list"]) == 2
    assert "tinygpt.project.json" in capsys.readouterr().err


def test_the_readme_example_environment_works(tmp_path):
    """The README's example is complete: it loads from the project file, splits disjointly, and
    its checker rewards the right call and refuses the wrong one."""
    import re
    from pathlib import Path

    from tinygpt.runtime.contracts.environments import ToolCallRecord, Transcript

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Environments: train on your own task"):]
    code, project = re.findall(r"```(?:python|json)\n(.*?)```", section, re.S)[:2]
    (tmp_path / "my_env.py").write_text(code)
    (tmp_path / "tinygpt.project.json").write_text(project)
    env = load(tmp_path / "tinygpt.project.json", "lamp")
    train, test = runner.split_tasks(env, "lamp", 6, 4, 0)
    task = test[0]
    state = env.reset(task)
    call = ToolCallRecord(name="set_color", arguments={"color": task.data["color"]},
                          result=env.step(state, "set_color", {"color": task.data["color"]}))
    assert env.score(task, state, Transcript(calls=[call], answer="Done.", finished=True, turns=2)).reward == 1.0
    wrong = env.reset(task)
    env.step(wrong, "set_color", {"color": "red"})
    assert env.score(task, wrong, Transcript(answer="Done.", finished=True, turns=2)).reward == 0.0


def test_env_run_queue_enqueues_one_job_that_names_the_environment(tmp_path, home, tiny_model_dir, redis_client, monkeypatch, capsys):
    from tinygpt.runtime import cli

    write_project(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    argv = ["env", "run", "toy", "--queue", "--rounds", "3", "--explore", "0.5"]
    assert cli.main(argv) == 0 and "enqueued environment-toy-" in capsys.readouterr().out
    assert cli.main(argv) == 0 and "already enqueued" in capsys.readouterr().out
    (job,) = stages.get_queue(redis_client, "train").get_jobs()
    payload = job.args[0]
    assert isinstance(payload, EnvironmentJob) and payload.project_file == str(tmp_path / "tinygpt.project.json")
    assert (payload.settings.environment, payload.settings.rounds, payload.settings.explore) == ("toy", 3, 0.5)
    assert cli.main([*argv, "--model", "other"]) == 2


def test_run_settings_refuse_bad_names_and_counts():
    with pytest.raises(ValueError, match="specialist 'Bad/x' is not a valid name"):
        settings(specialist="Bad/x")
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        settings(attempts=0)
