"""Hindsight relabels: a failed episode recorded again under the task it did achieve.

The runtime side (`POST /v1/trajectories/{id}/hindsight`) is tested over real HTTP on a
tiny random model: the relabel keeps every sampled id and swaps only the opening's ids, so
the rows it trains are the original's sampled ids under the new request. The environment
side: the bundled families name what a clean run did as one of their own task kinds, and
their own checker passes it; the runner refuses an environment whose relabel its checker
fails, and records the relabel through the runtime when it passes.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from tinygpt.runtime.contracts.environments import ToolCallRecord, Transcript
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory
from tinygpt.runtime.environments import Environment, EnvTask, Reward, runner, tool
from tinygpt.runtime.environments.bundled.fileops import FileOps
from tinygpt.runtime.environments.bundled.shop import Shop
from tinygpt.runtime.environments.loader import EnvironmentBroken
from tinygpt.runtime.serving.protocol import Message, Tool
from tinygpt.workers.tokens import sequences

TOOLS = [tool("ping", "Ping a host.", {"host": {"type": "string", "maxLength": 8}})]
SYSTEM = {"role": "system", "content": "You ping hosts with the tool."}


def _opening(host: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": f"Ping the host {host}."}]


def _two_turns(client, opening: list[dict], session: str) -> str:
    """A call, its result, an answer: one recorded trajectory (its id)."""
    headers = {runner.SESSION_HEADER: session}
    raw = client.chat.completions.with_raw_response.create(
        model="base", messages=opening, tools=TOOLS, tool_choice="required", max_tokens=40, temperature=0.0,
        extra_headers=headers)
    message = raw.parse().choices[0].message
    call = message.tool_calls[0]
    follow = [*opening, {"role": "assistant", "content": "", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True})}]
    client.chat.completions.create(model="base", messages=follow, tools=TOOLS, tool_choice="auto", max_tokens=8,
                                   temperature=0.0, extra_headers=headers)
    return raw.headers[runner.TRAJECTORY_HEADER]


def _trained(seq) -> list[int]:
    return [t for t, m in zip(seq.input_ids, seq.loss_mask) if m]


def test_a_relabel_keeps_every_sampled_id_and_swaps_only_the_opening(tiny_model_dir, tmp_path):
    from tests.serving_support import post, running
    from tinygpt.workers.environment.rounds import _client

    new_opening = _opening("zeta-9")
    with running(tiny_model_dir, tmp_path) as rt:
        client = _client(rt.url)
        tid = _two_turns(client, _opening("alpha"), "s-1")
        body = {"original": _opening("alpha"), "messages": new_opening, "reward": 1.0, "source": "test", "comment": "ok"}
        status, out = post(rt.port, f"/v1/trajectories/{tid}/hindsight", body)
        assert status == 201, out
        new_id = json.loads(out)["trajectory_id"]
        assert json.loads(out)["hindsight_of"] == tid and new_id != tid
        # The same relabel again is the same trajectory, not a second copy.
        assert json.loads(post(rt.port, f"/v1/trajectories/{tid}/hindsight", body)[1])["trajectory_id"] == new_id

        prompts = rt.completions.prompts
        tools = msgspec.convert(TOOLS, list[Tool])
        render = lambda m: prompts.encode(prompts.render(msgspec.convert(m, list[Message]), tools))  # noqa: E731
        old_ids, new_ids = render(_opening("alpha")), render(new_opening)
    root = tmp_path / "trajectories"
    original = read_any(root / f"{tid}.msgpack", Trajectory)
    relabel = read_any(root / f"{new_id}.msgpack", Trajectory)
    assert relabel.hindsight_of == tid and original.hindsight_of is None
    assert [(f.reward, f.source, f.trajectory_id) for f in relabel.feedback] == [(1.0, "test", new_id)]
    assert len(relabel.steps) == len(original.steps) == 2
    for before, after in zip(original.steps, relabel.steps):
        assert before.prompt_ids[: len(old_ids)] == old_ids
        assert after.prompt_ids == new_ids + before.prompt_ids[len(old_ids):]
        assert after.output_ids == before.output_ids and after.forced == before.forced
    # What trains: the same sampled ids, under the new request.
    rows, rows_before = sequences(relabel), sequences(original)
    assert [_trained(s) for s in rows] == [_trained(s) for s in rows_before] and rows[0].input_ids[: len(new_ids)] == new_ids


def test_relabel_requests_that_cannot_be_honoured_get_a_clear_4xx(tiny_model_dir, tmp_path):
    from tests.serving_support import post, running
    from tinygpt.workers.environment.rounds import _client

    with running(tiny_model_dir, tmp_path) as rt:
        tid = _two_turns(_client(rt.url), _opening("alpha"), "s-2")
        good = {"original": _opening("alpha"), "messages": _opening("beta"), "reward": 1.0}

        def ask(body, target=tid):
            status, out = post(rt.port, f"/v1/trajectories/{target}/hindsight", body)
            return status, json.loads(out)

        status, err = ask({**good, "original": _opening("gamma")})
        assert status == 409 and err["error"]["code"] == "opening_mismatch" and "original" in err["error"]["message"]
        assert ask(good, "traj_" + "0" * 24)[0] == 404
        assert ask(good, "../../etc")[0] == 404
        assert ask({**good, "reward": 1.5})[0] == 400
        assert ask({**good, "messages": []})[0] == 400
        assert ask({**good, "shell": "rm -rf /"})[0] == 400
        status, made = ask(good)
        assert status == 201
        # A repeat names the same relabel, but only with the true original.
        assert ask(good) == (201, made)
        assert ask({**good, "original": _opening("beta")})[0] == 409
        status, err = ask({**good, "original": _opening("beta")}, made["trajectory_id"])
        assert status == 409 and err["error"]["code"] == "trajectory_is_relabel"
        for i in range(7):  # eight relabels of one trajectory at most
            assert ask({**good, "messages": _opening(f"h{i}")})[0] == 201
        status, err = ask({**good, "messages": _opening("one-more")})
        assert status == 409 and err["error"]["code"] == "relabel_limit"
        # Each slot's relabel names itself, in its id and its feedback.
        for k in range(8):
            t = read_any(tmp_path / "trajectories" / f"{tid}-h-{k}.msgpack", Trajectory)
            assert t.id == f"{tid}-h-{k}" and t.hindsight_of == tid and [f.trajectory_id for f in t.feedback] == [t.id]
        assert rt.recorder.running


class PingTo(Environment):
    """A task names a host; only a ping of that host succeeds. The hindsight task names the
    host that was pinged (what a random model pings is never the requested host)."""

    tools = TOOLS
    max_turns = 2
    max_tokens = 40

    def tasks(self, split, n, seed):
        hosts = [f"no-such-{split}-host-{i}" for i in range(n)]
        return [EnvTask(id=f"{split}-{i}", kind="ping", messages=_opening(h), data={"host": h}) for i, h in enumerate(hosts)]

    def reset(self, task):
        return []

    def step(self, state, name, arguments):
        state.append(arguments.get("host"))
        return {"ok": True}

    def score(self, task, state, transcript):
        return Reward(reward=1.0 if task.data["host"] in state else 0.0)

    def hindsight(self, task, state, transcript):
        if not state or not isinstance(state[0], str):
            return None
        return EnvTask(id=f"{task.id}-h", kind="pinged", messages=_opening(state[0]), data={"host": state[0]})


class LyingHindsight(PingTo):
    def hindsight(self, task, state, transcript):
        return EnvTask(id="lie", kind="ping", messages=_opening("elsewhere"), data={"host": "elsewhere"})


def test_the_runner_records_relabels_its_environment_vouches_for(tiny_model_dir, tmp_path):
    from tests.serving_support import running
    from tinygpt.workers.environment.rounds import _client

    env = PingTo()
    jobs = [runner.Attempt(t) for t in env.tasks("train", 3, 0)]
    cfg = runner.Sampling(model="base", temperature=0.9, max_turns=2, max_tokens=40, seed=3, hindsight=True)
    with running(tiny_model_dir, tmp_path) as rt:
        client = _client(rt.url)
        results = runner.run_many(client, env, "ping", jobs, cfg, concurrency=3)
        with pytest.raises(EnvironmentBroken, match="fails by the environment's own checker"):
            runner.run_episode(client, LyingHindsight(), "liar", jobs[0], cfg)
        plain = runner.run_episode(client, env, "ping", jobs[0], runner.Sampling(model="base", max_turns=2, max_tokens=40))
    assert plain.relabel_id is None
    relabeled = [r for r in results if r.relabel_id]
    assert relabeled, [r.reason for r in results]
    for r in relabeled:
        assert not r.success and r.relabeled_as == "pinged"
        traj = read_any(tmp_path / "trajectories" / f"{r.relabel_id}.msgpack", Trajectory)
        assert traj.hindsight_of == r.trajectory_id and traj.feedback[0].reward == 1.0


# ---------------------------------------------------------------- the bundled families


def _episode(env, task, calls, finished=True):
    state = env.reset(task)
    records = [ToolCallRecord(name=n, arguments=a, result=env.step(state, n, a), raw_arguments=json.dumps(a)) for n, a in calls]
    return state, Transcript(calls=records, answer="Done.", finished=finished, turns=len(calls) + 1)


def _relabel(env, task, calls, finished=True):
    state, transcript = _episode(env, task, calls, finished)
    assert env.score(task, state, transcript).reward == 0.0  # a failed run of the task asked
    other = env.hindsight(task, state, transcript)
    if other is not None:
        verdict = env.score(other, state, transcript)
        assert verdict.reward == 1.0, verdict.reason
        assert other.messages[:-1] == task.messages[:-1] and other.messages[-1] != task.messages[-1]
    return other


def _fileops_task(kind):
    return next(t for t in FileOps().tasks("train", 12, 0) if t.kind == kind)


def test_fileops_names_what_a_failed_run_did():
    env = FileOps()
    rename = _fileops_task("rename")
    src = rename.data["solution"][0]["arguments"]["source"]
    # Renamed into the root instead of next to it: a rename to that full path.
    other = _relabel(env, rename, [("move_file", {"source": src, "destination": "/elsewhere.txt"})])
    assert other.kind == "rename" and "/elsewhere.txt" in other.messages[-1]["content"] and src in other.messages[-1]["content"]
    # Moved to the same folder under another name: a rename (by name or by path).
    folder = src.rsplit("/", 1)[0]
    other = _relabel(env, rename, [("move_file", {"source": src, "destination": f"{folder}/zz-other.md"})])
    assert other.kind == "rename" and "zz-other.md" in other.messages[-1]["content"]
    # Moved, same name, another folder: a move.
    other = _relabel(env, rename, [("move_file", {"source": src, "destination": "/attic" + src[src.rfind('/'):]})])
    assert other.kind == "move" and "/attic" in other.messages[-1]["content"]

    copy = _fileops_task("copy")
    files = copy.data["files"]
    source = next(p for p in files if p != copy.data["solution"][0]["arguments"]["path"])
    other = _relabel(env, copy, [("read_file", {"path": source}), ("write_file", {"path": "/new/copy.txt", "content": files[source]})])
    assert other.kind == "copy" and source in other.messages[-1]["content"]
    other = _relabel(env, copy, [("write_file", {"path": "/new/x.txt", "content": "Hello there."})])
    assert other.kind == "write" and '"Hello there."' in other.messages[-1]["content"]

    find = _fileops_task("find_delete")
    target = find.data["solution"][1]["arguments"]["path"]
    victim = next(p for p in find.data["files"] if p != target)
    word = next(w for w in find.data["files"][victim].rstrip(".").split() if w.isalpha() and len(w) > 3
                and sum(w.lower() in t.lower() for t in find.data["files"].values()) == 1)
    other = _relabel(env, find, [("search", {"query": word}), ("delete_file", {"path": victim})])
    assert other.kind == "find_delete" and word in other.messages[-1]["content"]
    other = _relabel(env, find, [("delete_file", {"path": victim})])
    assert other.kind == "delete" and victim in other.messages[-1]["content"]

    # No task to name: a failed call, no answer, nothing changed, an overwrite.
    assert _relabel(env, find, [("delete_file", {"path": victim}), ("delete_file", {"path": "/nope.txt"})]) is None
    assert _relabel(env, find, [("delete_file", {"path": victim})], finished=False) is None
    assert _relabel(env, find, [("read_file", {"path": victim})]) is None
    assert _relabel(env, find, [("write_file", {"path": victim, "content": "x"})]) is None


def test_shop_names_what_a_failed_run_did():
    env = Shop()
    tasks = env.tasks("train", 10, 0)
    add = next(t for t in tasks if t.kind == "add")
    pid, qty = next(iter(add.data["expected"]["cart"].items()))
    other_pid = next(p for p in add.data["catalogue"] if p != pid)
    other = _relabel(env, add, [("add_to_cart", {"product_id": other_pid, "quantity": 7})])
    assert other.kind == "add" and other_pid in other.messages[-1]["content"] and "7" in other.messages[-1]["content"]
    name = add.data["catalogue"][other_pid]
    other = _relabel(env, add, [("search_products", {"query": name}), ("add_to_cart", {"product_id": other_pid, "quantity": 1})])
    assert other.kind == "find_add" and name in other.messages[-1]["content"]
    buy = next(t for t in tasks if t.kind == "buy")
    (pid, qty), = buy.data["expected"]["orders"][0]["items"].items()
    other = _relabel(env, buy, [("add_to_cart", {"product_id": pid, "quantity": qty}), ("place_order", {"address": "77 Nowhere Rd"})])
    assert other.kind == "buy" and "77 Nowhere Rd" in other.messages[-1]["content"]
    remove = next(t for t in tasks if t.kind == "remove")
    wrong = next(p for p in remove.data["cart"] if p in remove.data["expected"]["cart"])
    other = _relabel(env, remove, [("remove_from_cart", {"product_id": wrong})])
    assert other.kind == "remove" and wrong in other.messages[-1]["content"]
    assert _relabel(env, add, [("view_cart", {})]) is None
    assert _relabel(env, add, [("add_to_cart", {"product_id": "nope", "quantity": 1})]) is None
