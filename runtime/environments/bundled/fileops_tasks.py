"""Varied file-operation tasks with a checker that knows what the right outcome is.

`generate(n, seed, split)` builds tasks: a small random workspace (a `FakeFS`), an
instruction in one of several phrasings, a reference solution (the calls a good agent
makes) and the files the workspace must hold afterwards. Train and held-out tasks draw
folder names, file names, words and texts from disjoint pools, so a specialist that does
better on held-out tasks learned the skill, not the names.

`check(task, fs, calls, finished)` decides whether an agent's run achieved the goal: the
workspace ends exactly as expected (nothing else touched), no call failed, and the agent
stopped on its own with an answer. It also says whether the first call was the right
function with the right arguments, the per-call view of the same question.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import random
from typing import Any, Literal

from tinygpt.runtime.contracts.base import Contract

from .fileops_fs import FakeFS, ToolError, execute, normalize

Split = Literal["train", "test"]
Kind = Literal["delete", "move", "rename", "write", "copy", "find_delete"]
KINDS: tuple[Kind, ...] = ("delete", "move", "rename", "write", "copy", "find_delete")
# Single-call tasks dominate: a 135M model solves some of them from the start, which is
# what rejection sampling needs; the two-call kinds show whether multi-turn use improves.
DEFAULT_MIX: dict[Kind, float] = {"delete": 1.0, "move": 1.0, "rename": 1.0, "write": 1.0, "copy": 0.5, "find_delete": 0.5}

SYSTEM_PROMPT = (
    "You are a file assistant working in a sandboxed workspace. Use the tools to do exactly "
    "what the user asks, one call at a time. When the task is done, reply with one short sentence."
)


def _worked_example(i: int, ask: str, name: str, arguments: dict[str, Any], result: dict[str, Any], answer: str) -> list[dict[str, Any]]:
    call_id = f"call_example_{i}"
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    return [
        {"role": "user", "content": ask},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
        {"role": "assistant", "content": answer},
    ]


# Two worked examples open every conversation, as agent prompts often do. Without them the
# 135M base model almost never copies a path from the request (about 5% of sampled runs
# succeeded); with them it solves some task kinds sometimes, which rejection sampling needs.
# They show a read (no task is one) and a move, on paths outside every task pool.
PRIMER: list[dict[str, Any]] = _worked_example(
    0, "What is in the file /tmp/example.txt?", "read_file", {"path": "/tmp/example.txt"},
    {"ok": True, "content": "Hello."}, "It says: Hello.",
) + _worked_example(
    1, "Move /inbox/photo.jpg into the folder /album.", "move_file",
    {"source": "/inbox/photo.jpg", "destination": "/album/photo.jpg"},
    {"ok": True, "moved_to": "/album/photo.jpg"}, "Moved it to /album/photo.jpg.",
)


def opening(prompt: str) -> list[dict[str, Any]]:
    """The first request's messages for a task: system prompt, worked examples, the task."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, *PRIMER, {"role": "user", "content": prompt}]


class Call(Contract):
    name: str
    arguments: dict[str, Any]


class Task(Contract):
    """One task: the starting workspace, the instruction, and what must hold afterwards."""

    id: str
    kind: Kind
    split: Split
    prompt: str
    files: dict[str, str]
    # The workspace's files once the task is done (path -> text).
    expected: dict[str, str]
    # A reference solution: executing it on `files` yields `expected`.
    solution: list[Call]

    def workspace(self) -> FakeFS:
        return FakeFS(self.files)


class Outcome(Contract):
    """What the checker found about one agent run on one task."""

    task_id: str
    kind: Kind
    success: bool
    state_ok: bool
    first_call_ok: bool
    finished: bool
    calls: int = 0
    failed_calls: int = 0
    reason: str = ""


_POOLS: dict[Split, dict[str, list[str]]] = {
    "train": {
        "dirs": ["docs", "notes", "drafts", "reports", "photos", "music", "projects", "backup", "archive", "work"],
        "stems": ["todo", "budget", "resume", "plan", "ideas", "summary", "minutes", "draft", "letter", "report",
                  "schedule", "contacts", "goals", "diary", "checklist", "outline"],
        "exts": [".txt", ".md", ".csv"],
        "words": ["pineapple", "volcano", "saxophone", "glacier", "lantern", "falcon", "meadow", "harbor"],
        "texts": ["Call the bank on Friday.", "Buy milk, eggs and bread.", "Q3 numbers look good.",
                  "Remember to water the plants.", "Meeting moved to 3pm.", "Book flights for May.",
                  "Draft the intro section.", "Pay the electricity bill."],
    },
    "test": {
        "dirs": ["invoices", "recipes", "letters", "scripts", "videos", "research", "old", "shared"],
        "stems": ["agenda", "travel", "inventory", "poem", "receipts", "notes2024", "memo", "quotes",
                  "packing", "playlist", "grades", "menu"],
        "exts": [".txt", ".md", ".log"],
        "words": ["cactus", "trombone", "avalanche", "compass", "orchid", "walrus"],
        "texts": ["Renew the passport.", "Soup needs more salt.", "Server restarted at noon.",
                  "Ship the parcel on Monday.", "Tickets are on the fridge.", "Lunch with Sam at one."],
    },
}

_PHRASES: dict[Kind, list[str]] = {
    "delete": ["Delete {path}.", "Please remove the file {path}.", "Get rid of {path}, I don't need it anymore."],
    "move": ["Move {path} into the folder /{dir}.", "Put {path} in /{dir}.", "Please move the file {path} to the /{dir} folder."],
    "rename": ["Rename {path} to {new}.", "Rename {path} to {dst}.", "Please rename the file {path} so it is called {new}."],
    "write": ['Create the file {path} with the text "{text}"', 'Write "{text}" into a new file {path}',
              'Make a file {path} that says "{text}"'],
    "copy": ["Copy {path} to {dst}.", "Make a copy of {path} at {dst}.", "Duplicate the file {path} as {dst}."],
    "find_delete": ['One file mentions the word "{word}". Find it and delete it.',
                    'Delete the file that contains the word "{word}".',
                    'Search for the file mentioning "{word}" and remove it.'],
}


def _workspace(rng: random.Random, pool: dict[str, list[str]], n_files: int) -> dict[str, str]:
    dirs = rng.sample(pool["dirs"], 3)
    files: dict[str, str] = {}
    while len(files) < n_files:
        path = f"/{rng.choice(dirs)}/{rng.choice(pool['stems'])}{rng.choice(pool['exts'])}"
        files.setdefault(path, rng.choice(pool["texts"]))
    return files


def _make(rng: random.Random, kind: Kind, pool: dict[str, list[str]]) -> tuple[str, dict[str, str], list[Call]]:
    """(prompt, starting files, reference solution) of one task of `kind`."""
    files = _workspace(rng, pool, rng.randint(3, 5))
    path = rng.choice(sorted(files))
    used_dirs = {posixpath.dirname(p).lstrip("/") for p in files}
    phrase = rng.choice(_PHRASES[kind])

    def fresh_name() -> str:
        for _ in range(100):
            name = f"{rng.choice(pool['stems'])}{rng.choice(pool['exts'])}"
            if posixpath.join(posixpath.dirname(path), name) not in files:
                return name
        raise RuntimeError("no fresh file name left in the pool")

    if kind == "delete":
        return phrase.format(path=path), files, [Call(name="delete_file", arguments={"path": path})]
    if kind == "move":
        target = rng.choice([d for d in pool["dirs"] if f"/{d}" != posixpath.dirname(path)])
        dst = f"/{target}/{posixpath.basename(path)}"
        files = {p: t for p, t in files.items() if p != dst}
        return phrase.format(path=path, dir=target), files, [Call(name="move_file", arguments={"source": path, "destination": dst})]
    if kind == "rename":
        new = fresh_name()
        dst = posixpath.join(posixpath.dirname(path), new)
        return phrase.format(path=path, new=new, dst=dst), files, [Call(name="move_file", arguments={"source": path, "destination": dst})]
    if kind == "write":
        new = f"/{rng.choice(sorted(used_dirs))}/{fresh_name()}"
        while new in files:
            new = f"/{rng.choice(sorted(used_dirs))}/{fresh_name()}"
        text = rng.choice(pool["texts"])
        return phrase.format(path=new, text=text), files, [Call(name="write_file", arguments={"path": new, "content": text})]
    if kind == "copy":
        dst = f"/{rng.choice(pool['dirs'])}/{fresh_name()}"
        while dst in files:
            dst = f"/{rng.choice(pool['dirs'])}/{fresh_name()}"
        solution = [Call(name="read_file", arguments={"path": path}),
                    Call(name="write_file", arguments={"path": dst, "content": files[path]})]
        return phrase.format(path=path, dst=dst), files, solution
    # find_delete: exactly one file holds the word.
    word = rng.choice(pool["words"])
    files[path] = f"{files[path]} Note: {word}."
    solution = [Call(name="search", arguments={"query": word}), Call(name="delete_file", arguments={"path": path})]
    return phrase.format(word=word), files, solution


def generate(n: int, seed: int, split: Split = "train", mix: dict[Kind, float] | None = None) -> list[Task]:
    """`n` distinct tasks, the same for the same (n, seed, split, mix); kinds drawn by `mix`
    weights. The first `k` tasks of a longer list are the `k` tasks of a shorter one."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    mix = mix or DEFAULT_MIX
    unknown = set(mix) - set(KINDS)
    if unknown or not any(w > 0 for w in mix.values()):
        raise ValueError(f"mix needs positive weights for kinds among {', '.join(KINDS)}; got {mix}")
    rng = random.Random(f"{split}:{seed}")
    kinds = [k for k in KINDS if mix.get(k, 0) > 0]
    weights = [mix[k] for k in kinds]
    tasks: list[Task] = []
    seen: set[str] = set()
    draws = 0
    while len(tasks) < n:
        i = len(tasks)
        # Cycle through the kinds first so even a handful of tasks covers each of them.
        kind = kinds[i] if i < len(kinds) else rng.choices(kinds, weights)[0]
        prompt, files, solution = _make(rng, kind, _POOLS[split])
        digest = hashlib.sha256(json.dumps([prompt, files], sort_keys=True).encode()).hexdigest()[:8]
        draws += 1
        if digest in seen:
            # No task twice in one list: slices of it (the demo's test and gate sets) are then
            # disjoint by construction. The pools hold far more tasks than anyone asks for.
            if draws > 100 * (n + 10):
                raise ValueError(f"cannot draw {n} distinct {split} tasks from the pools")
            continue
        seen.add(digest)
        fs = FakeFS(files)
        for call in solution:
            result = execute(fs, call.name, call.arguments)
            if not result["ok"]:  # a generator bug, never a property of the model
                raise AssertionError(f"reference solution fails on {kind}: {result['error']}")
        tasks.append(Task(id=f"{split}-{seed}-{i}-{digest}", kind=kind, split=split, prompt=prompt,
                          files=files, expected=fs.snapshot(), solution=solution))
    return tasks


def _same_call(got_name: str, got_args: str | dict[str, Any], want: Call) -> bool:
    """Right function and arguments that mean the same (paths normalized, text stripped)."""
    if got_name != want.name:
        return False
    try:
        args = json.loads(got_args) if isinstance(got_args, str) else got_args
    except ValueError:
        return False
    if not isinstance(args, dict) or set(args) != set(want.arguments):
        return False
    for key, value in want.arguments.items():
        given = args[key]
        try:
            if key in ("path", "source", "destination"):
                if normalize(given) != normalize(value):
                    return False
            elif not isinstance(given, str) or given.strip().lower() != str(value).strip().lower():
                return False
        except ToolError:
            return False
    return True


def check(task: Task, fs: FakeFS, calls: list[tuple[str, str]], results: list[dict[str, Any]], finished: bool) -> Outcome:
    """Judge one run: `calls` made in order (name, JSON arguments), their `results`, and
    whether the agent ended with an answer of its own (not the turn limit)."""
    state_ok = fs.snapshot() == dict(sorted(task.expected.items()))
    failed = sum(1 for r in results if not r.get("ok"))
    first_ok = bool(calls) and _same_call(calls[0][0], calls[0][1], task.solution[0])
    reasons = []
    if not state_ok:
        reasons.append("workspace differs from the goal")
    if failed:
        reasons.append(f"{failed} failed call(s)")
    if not finished:
        reasons.append("no final answer within the turn limit")
    return Outcome(
        task_id=task.id, kind=task.kind, success=not reasons, state_ok=state_ok, first_call_ok=first_ok,
        finished=finished, calls=len(calls), failed_calls=failed, reason="; ".join(reasons),
    )


def _plain(text: Any) -> bool:
    # Text that reads as one quoted phrase in a request.
    return isinstance(text, str) and 0 < len(text) <= 200 and text == text.strip() and not any(c in text for c in '"\n\r')


def hindsight(task: Task, fs: FakeFS, calls: list[tuple[str, dict[str, Any]]], results: list[dict[str, Any]],
              finished: bool) -> Task | None:
    """The task this run achieved, phrased as the generator phrases tasks, or None.

    Only clean runs qualify (every call succeeded, an answer at the end) whose effect is one
    of the task kinds: one file deleted (found by a one-word search first: find-and-delete),
    one file moved (same folder: rename; same name: move; else a rename to the full path),
    one new file (holding a file read first: copy; else write). `calls` are (name, parsed
    arguments) in order."""
    if not finished or not calls or any(not r.get("ok") for r in results):
        return None
    before, after = task.files, fs.snapshot()
    removed = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    if any(before[p] != after[p] for p in set(before) & set(after)):
        return None  # an overwrite is no task kind
    rng = random.Random(f"hindsight:{task.id}:{json.dumps(after, sort_keys=True)}")
    phrase = lambda kind: rng.choice(_PHRASES[kind])  # noqa: E731
    if len(removed) == 1 and not added:
        path = removed[0]
        words = [a.get("query") for n, a in calls if n == "search"]
        found = [w for w in words if isinstance(w, str) and w.isalpha() and 3 <= len(w) <= 24
                 and [p for p, t in before.items() if w.lower() in t.lower()] == [path]]
        kind, prompt = ("find_delete", phrase("find_delete").format(word=found[0])) if found else \
            ("delete", phrase("delete").format(path=path))
    elif len(removed) == 1 and len(added) == 1 and before[removed[0]] == after[added[0]]:
        src, dst = removed[0], added[0]
        if posixpath.dirname(src) == posixpath.dirname(dst):
            kind, prompt = "rename", phrase("rename").format(path=src, new=posixpath.basename(dst), dst=dst)
        elif posixpath.basename(src) == posixpath.basename(dst) and posixpath.dirname(dst) != "/":
            kind, prompt = "move", phrase("move").format(path=src, dir=posixpath.dirname(dst).lstrip("/"))
        else:
            kind, prompt = "rename", _PHRASES["rename"][1].format(path=src, dst=dst)
    elif not removed and len(added) == 1:
        dst = added[0]
        read = [normalize(a.get("path")) for n, a in calls if n == "read_file" and isinstance(a.get("path"), str)]
        sources = [p for p in read if before.get(p) == after[dst]]
        if sources:
            kind, prompt = "copy", phrase("copy").format(path=sources[0], dst=dst)
        elif _plain(after[dst]):
            kind, prompt = "write", phrase("write").format(path=dst, text=after[dst])
        else:
            return None
    else:
        return None
    return Task(id=f"{task.id}-hindsight-{kind}", kind=kind, split=task.split, prompt=prompt, files=dict(before),
                expected=after, solution=[Call(name=n, arguments=a) for n, a in calls])
