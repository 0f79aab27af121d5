"""The demo's sandboxed filesystem, task generator and checker (no model, no server)."""

from __future__ import annotations

import json

import msgspec
import pytest

from tinygpt.runtime.environments.bundled import fileops_tasks as T
from tinygpt.runtime.environments.bundled.fileops_fs import TOOL_NAMES, TOOLS, FakeFS, execute, normalize


def test_tools_are_openai_function_definitions():
    assert sorted(TOOL_NAMES) == ["delete_file", "list_dir", "move_file", "read_file", "search", "write_file"]
    for tool in TOOLS:
        params = tool["function"]["parameters"]
        assert tool["type"] == "function" and params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])


def test_fs_operations_and_results():
    fs = FakeFS({"/docs/a.txt": "alpha", "/docs/b.md": "beta", "/notes/c.txt": "gamma"})
    assert execute(fs, "list_dir", {"path": "/"}) == {"ok": True, "entries": ["docs/", "notes/"]}
    assert execute(fs, "list_dir", '{"path": "/docs"}')["entries"] == ["a.txt", "b.md"]
    assert execute(fs, "read_file", {"path": "docs/a.txt"}) == {"ok": True, "content": "alpha"}
    assert execute(fs, "write_file", {"path": "/new/d.txt", "content": "delta"})["ok"]
    assert "new/" in fs.list_dir("/")
    # mv semantics: a folder destination keeps the file name.
    assert execute(fs, "move_file", {"source": "/docs/a.txt", "destination": "/notes"}) == {"ok": True, "moved_to": "/notes/a.txt"}
    assert execute(fs, "delete_file", {"path": "/docs/b.md"})["ok"]
    assert execute(fs, "search", {"query": "GAMMA"}) == {"ok": True, "matches": ["/notes/c.txt"]}
    assert fs.snapshot() == {"/new/d.txt": "delta", "/notes/a.txt": "alpha", "/notes/c.txt": "gamma"}


@pytest.mark.parametrize(
    "name, args, error",
    [
        ("read_file", {"path": "/nope.txt"}, "no such file: /nope.txt"),
        ("delete_file", {"path": "/docs"}, "is a folder"),
        ("move_file", {"source": "/docs/a.txt", "destination": "/docs/b.md"}, "already exists"),
        ("list_dir", {"path": "/docs/a.txt"}, "is a file"),
        ("write_file", {"path": "/x.txt", "content": 3}, "content must be a string"),
        ("search", {"query": " "}, "non-empty"),
        ("format_disk", {}, "unknown tool"),
        ("read_file", "{not json", "not JSON"),
        ("read_file", "[1]", "must be a JSON object"),
        ("read_file", {}, "expected a path"),
    ],
)
def test_fs_errors_are_results_and_change_nothing(name, args, error):
    fs = FakeFS({"/docs/a.txt": "alpha", "/docs/b.md": "beta"})
    before = fs.snapshot()
    result = execute(fs, name, args)
    assert result["ok"] is False and error in result["error"]
    assert fs.snapshot() == before


def test_paths_never_leave_the_sandbox():
    assert normalize("../../etc/passwd") == "/etc/passwd"
    assert normalize("/a/./b/../c.txt") == "/a/c.txt"
    assert normalize("//") == "/"
    fs = FakeFS({"/a.txt": "x"})
    assert execute(fs, "read_file", {"path": "/../a.txt"}) == {"ok": True, "content": "x"}


def test_generate_is_deterministic_and_covers_every_kind():
    first = T.generate(12, seed=3)
    assert first == T.generate(12, seed=3)
    assert first != T.generate(12, seed=4)
    assert {t.kind for t in first[: len(T.KINDS)]} == set(T.KINDS)
    assert len({t.id for t in first}) == len(first)
    assert [t.kind for t in T.generate(5, 0, mix={"delete": 1.0})] == ["delete"] * 5
    with pytest.raises(ValueError, match="mix"):
        T.generate(3, 0, mix={"format": 1.0})


def test_held_out_tasks_share_no_names_with_training_tasks():
    def names(task):
        words = set()
        for path in task.files:
            words.update(p for p in path.replace(".", "/").split("/") if p)
        return words

    train = set().union(*(names(t) for t in T.generate(60, 0, "train")))
    test = set().union(*(names(t) for t in T.generate(60, 0, "test")))
    assert not (train & test) - {"txt", "md"}


@pytest.mark.parametrize("kind", T.KINDS)
def test_reference_solution_passes_the_checker(kind):
    for task in T.generate(6, 1, "test", mix={kind: 1.0}):
        fs = task.workspace()
        calls = [(c.name, json.dumps(c.arguments)) for c in task.solution]
        results = [execute(fs, name, args) for name, args in calls]
        outcome = T.check(task, fs, calls, results, finished=True)
        assert outcome.success and outcome.first_call_ok and outcome.reason == "", (task.prompt, outcome)
        # The goal is a change: doing nothing never passes.
        idle = T.check(task, task.workspace(), [], [], finished=True)
        assert not idle.success and not idle.state_ok and not idle.first_call_ok


def test_checker_names_what_went_wrong():
    task = T.generate(1, 0, "train", mix={"delete": 1.0})[0]
    target = task.solution[0].arguments["path"]
    other = next(p for p in task.files if p != target)

    fs = task.workspace()
    wrong = [("delete_file", json.dumps({"path": other}))]
    outcome = T.check(task, fs, wrong, [execute(fs, *wrong[0])], finished=True)
    assert not outcome.success and not outcome.state_ok and not outcome.first_call_ok
    assert "workspace differs" in outcome.reason

    # Right in the end, but a failed call and no final answer on the way.
    fs = task.workspace()
    calls = [("delete_file", json.dumps({"path": "/missing.txt"})), ("delete_file", json.dumps({"path": target.lstrip("/")}))]
    results = [execute(fs, *c) for c in calls]
    outcome = T.check(task, fs, calls, results, finished=False)
    assert outcome.state_ok and not outcome.success and not outcome.first_call_ok
    assert outcome.reason == "1 failed call(s); no final answer within the turn limit"
    assert outcome.calls == 2 and outcome.failed_calls == 1


def test_first_call_matching_normalizes_paths_but_not_content():
    call = T.Call(name="write_file", arguments={"path": "/docs/x.txt", "content": "Hello."})
    assert T._same_call("write_file", '{"path": "docs/./x.txt", "content": " hello. "}', call)
    assert not T._same_call("write_file", '{"path": "/docs/x.txt", "content": "Hello"}', call)
    assert not T._same_call("write_file", '{"path": "/docs/x.txt"}', call)
    assert not T._same_call("move_file", '{"path": "/docs/x.txt", "content": "Hello."}', call)
    assert not T._same_call("write_file", "not json", call)


def test_task_round_trips_as_a_contract():
    task = T.generate(1, 0)[0]
    assert msgspec.json.decode(msgspec.json.encode(task), type=T.Task) == task
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"id": "x", "surprise": 1}', type=T.Task)


def test_a_task_list_holds_no_task_twice_and_its_slices_are_disjoint():
    held = T.generate(80, 0, "test")
    contents = [json.dumps([t.prompt, t.files], sort_keys=True) for t in held]
    assert len(set(contents)) == len(contents) == 80
    # A shorter list is a prefix of a longer one: the demo's before/after tasks stay the same
    # whatever --gate-tasks says, and the gate's are the rest.
    assert T.generate(24, 0, "test") == held[:24]
