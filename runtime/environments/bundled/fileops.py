"""The demo's file-operations family as an environment: six tools on a sandboxed in-memory
filesystem; delete, move, rename, write, copy and find-and-delete tasks; the demo's checker;
hindsight relabels (what a failed run did achieve, as a task)."""

from __future__ import annotations

from typing import Any

import msgspec

from . import fileops_tasks as T
from .fileops_fs import TOOLS, FakeFS, execute
from tinygpt.runtime.environments import Environment, EnvTask, Reward, Transcript


class FileOps(Environment):
    tools = TOOLS
    # The demo's settings: a call, its result, an answer.
    max_turns = 3
    max_tokens = 96

    def tasks(self, split, n, seed) -> list[EnvTask]:
        # The generator draws train and test tasks from disjoint pools of names and texts.
        return [EnvTask(id=t.id, kind=t.kind, messages=T.opening(t.prompt), data=msgspec.to_builtins(t))
                for t in T.generate(n, seed, split)]

    def reset(self, task: EnvTask) -> FakeFS:
        return FakeFS(task.data["files"])

    def step(self, state: FakeFS, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return execute(state, name, arguments)

    def score(self, task: EnvTask, state: FakeFS, transcript: Transcript) -> Reward:
        original = msgspec.convert(task.data, T.Task)
        calls = [(c.name, c.raw_arguments) for c in transcript.calls]
        results = [c.result if isinstance(c.result, dict) else {"ok": False} for c in transcript.calls]
        outcome = T.check(original, state, calls, results, transcript.finished)
        return Reward(reward=1.0 if outcome.success else 0.0, reason=outcome.reason or "done")

    def plan(self, task: EnvTask) -> list[str]:
        # The reference solution's tools (read then write for a copy, search then delete for
        # find-and-delete): the sequences the base model never picks by itself.
        return [call["name"] for call in task.data["solution"]]

    def hindsight(self, task: EnvTask, state: FakeFS, transcript: Transcript) -> EnvTask | None:
        calls = [(c.name, c.arguments) for c in transcript.calls if c.arguments is not None]
        if len(calls) != len(transcript.calls):
            return None
        results = [c.result if isinstance(c.result, dict) else {"ok": False} for c in transcript.calls]
        achieved = T.hindsight(msgspec.convert(task.data, T.Task), state, calls, results, transcript.finished)
        if achieved is None:
            return None
        return EnvTask(id=achieved.id, kind=achieved.kind, messages=T.opening(achieved.prompt), data=msgspec.to_builtins(achieved))
