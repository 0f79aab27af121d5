"""Steps not worth learning from: cut off, stuck in a loop, or repeating a tool call.

The label stage flags such steps (`step_flags`); the dataset trains on them as context
only (loss mask 0), and a trajectory made mostly of them is dropped (`LabelRule.min_quality`).
What this catches is what a small model does when it loses the thread: with parallel tool
calls on, it emits the same call again and again until `max_tokens` cuts it off — a reply
that, unflagged, would teach the specialist to do exactly that.
"""

from __future__ import annotations

import json

import numpy as np

from tinygpt.runtime.contracts.trajectory import Trajectory

# A stretch of output that repeats a pattern of up to MAX_PERIOD tokens at least
# MIN_REPEATS times in a row, over at least MIN_SPAN tokens, is a loop, not an answer.
MAX_PERIOD = 96
MIN_REPEATS = 4
MIN_SPAN = 32

TRUNCATED = "cut off by max_tokens"
REPETITION = "degenerate repetition"
REPEATED_CALL = "repeats an earlier identical tool call"


def looping(ids: list[int]) -> bool:
    """Whether `ids` holds a run of one short pattern repeated (see MIN_REPEATS, MIN_SPAN)."""
    n = len(ids)
    if n < MIN_SPAN:
        return False
    a = np.asarray(ids, dtype=np.int64)
    for period in range(1, min(MAX_PERIOD, n // MIN_REPEATS) + 1):
        same = a[period:] == a[:-period]
        if not same.any():
            continue
        # Longest run of positions equal to the one `period` earlier.
        edges = np.diff(np.concatenate(([0], same.astype(np.int8), [0])))
        longest = int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
        if longest + period >= max(MIN_SPAN, MIN_REPEATS * period):
            return True
    return False


def _call_key(name: str, arguments: str) -> tuple[str, str]:
    # The same call re-serialized (key order, spacing) is still the same call.
    try:
        return name, json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return name, arguments


def step_flags(traj: Trajectory) -> dict[int, list[str]]:
    """Step index -> why it should not be trained on (only flagged steps appear).

    A turn is the run of steps an agent makes between user messages: a step that follows
    tool results for the previous step's calls continues its turn, so calling the same
    tool with the same arguments again there counts as a repeat too.
    """
    out: dict[int, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    prev = None
    for step in traj.steps:
        why = []
        if step.finish_reason == "length":
            why.append(TRUNCATED)
        if looping(step.output_ids):
            why.append(REPETITION)
        if not (prev is not None and prev.tool_calls and prev.tool_results):
            seen = set()
        for call in step.tool_calls:
            key = _call_key(call.name, call.arguments)
            if key in seen:
                why.append(f"{REPEATED_CALL} ({call.name})")
                break
            seen.add(key)
        if why:
            out[step.index] = why
        prev = step
    return out


def describe(flags: dict[int, list[str]]) -> str:
    return "; ".join(f"step {i}: {', '.join(w)}" for i, w in sorted(flags.items()))
