"""The environment interface: what a user implements so the factory can train on their task.

    class Shop(Environment):
        tools = [tool("add_to_cart", "Add an item.", {"item": {"type": "string"}})]

        def tasks(self, split, n, seed):            # "train" and "test" never share a task
            ...return [EnvTask(id=..., kind=..., messages=[...], data={...}), ...]

        def reset(self, task):                      # the episode's state, fresh per attempt
            return {"cart": []}

        def step(self, state, name, arguments):     # run one tool call, return a JSON-able result
            ...

        def score(self, task, state, transcript):   # the checker: Reward(reward in [0, 1], reason)
            ...

        def hindsight(self, task, state, transcript):   # optional: the task this episode did achieve
            ...return EnvTask(...) or None
        def plan(self, task):                       # optional: the tools the task takes, in order
            return ["search_products", "add_to_cart"] or None

The factory drives it through the runtime like any agent (chat completions with these
tools, each result sent back as a `tool` message, the reward posted as feedback), so an
episode is an ordinary recorded trajectory. The runner calls `reset`, `step` and `score`
from several threads at once, each episode with its own state: keep them free of shared
mutable state. An exception from `reset`, `step` or `score`, a result that is not JSON,
or a reward outside [0, 1] stops the run with a message naming the environment and the
method: a broken checker must never become training data.
"""

from __future__ import annotations

from typing import Any

from tinygpt.runtime.contracts.environments import EnvTask, Reward, Split, Transcript


def tool(name: str, description: str, properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An OpenAI function tool; every property is required unless `required` says otherwise."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties) if required is None else required,
                "additionalProperties": False,
            },
        },
    }


class Environment:
    """Base class of an environment. Subclasses set `tools` and implement the four methods."""

    # OpenAI `tools` objects offered on every request of an episode.
    tools: list[dict[str, Any]] = []
    # Requests per episode before the runner gives up (the episode is then unfinished).
    max_turns: int = 4
    # Tokens per reply: enough for the longest call or a one-sentence answer.
    max_tokens: int = 96

    def tasks(self, split: Split, n: int, seed: int) -> list[EnvTask]:
        """`n` tasks of `split`, the same for the same arguments. "train" and "test" must be
        disjoint by construction (e.g. drawn from disjoint pools of names): the test split
        is the held-out gate, and a task seen in training proves nothing there."""
        raise NotImplementedError

    def reset(self, task: EnvTask) -> Any:
        """A fresh state for one episode of `task` (the runner never shares it)."""
        raise NotImplementedError

    def step(self, state: Any, name: str, arguments: dict[str, Any]) -> Any:
        """Execute one tool call on `state`; return what the model sees (JSON-able).

        A call the tool refuses is a result (e.g. `{"ok": false, "error": ...}`), not an
        exception: exceptions mean the environment itself is broken."""
        raise NotImplementedError

    def score(self, task: EnvTask, state: Any, transcript: Transcript) -> Reward:
        """The checker: did this episode achieve `task`? A reward in [0, 1] and a reason."""
        raise NotImplementedError

    def hindsight(self, task: EnvTask, state: Any, transcript: Transcript) -> EnvTask | None:
        """Optional: a task this failed episode *did* achieve, or None.

        Most episodes of a small model fail the request and still do something coherent
        (the wrong file moved, another quantity added). Described as the request it answers,
        such an episode is a correct example: the factory records the same sampled tokens
        under that opening (a hindsight relabel) and trains on them with the successes. The
        returned task is scored with `score(returned, state, transcript)` before it is used,
        so it must pass this environment's own checker; the conversation must differ from
        `task.messages` only where the request does (same system prompt and examples), so
        the relabeled prompt is one the model will see. Return None when the outcome is no
        sensible request (nothing changed, a call failed)."""
        return None

    def plan(self, task: EnvTask) -> list[str] | None:
        """Optional: the tool names a solution of `task` calls, in order, or None.
        Names only, never arguments. Exploring attempts (`--explore`) then force one name
        per turn (a named `tool_choice`) and the model fills in every argument itself; the
        forced names are trained as the model's choice. This reaches tasks whose *sequence*
        the base never picks (read, then write: a copy), which forcing only the first call
        of a tool cycle does not. Without a plan, exploring attempts cycle through the tools."""
        return None
