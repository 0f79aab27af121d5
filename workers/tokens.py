"""Training sequences straight from recorded token ids, with a loss mask.

Each step of a trajectory holds the exact prompt ids the engine fed and the ids it
sampled. When a step's prompt starts with everything the previous steps fed and sampled
(the usual case: the template re-renders earlier turns identically), the steps chain
into one sequence; the new prompt tokens are context (mask 0) and the sampled ids are
trained on (mask 1); ids the grammar forced (`Step.forced`) are context like the prompt,
except those a named tool_choice imposed (`Step.steered`): the client's choice, which a kept
trajectory teaches like a sampled one. When it does not (the template could not reproduce an earlier
turn, flagged `prefix_mismatch`, or the client rewrote history) a new sequence starts
from that step's own prompt, so drifted ids are only ever context and never trained on.

A step flagged `prefix_mismatch` is masked out of the loss entirely: it was sampled
after a context the model never produced itself (re-rendered, or rewritten by the
client), so what it answered there is no example of the turn as it really went.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinygpt.runtime.contracts.trajectory import Trajectory


@dataclass
class Sequence:
    input_ids: list[int]
    loss_mask: list[int]
    # The first step the sequence covers (rows are named after it).
    step: int

    @property
    def trained(self) -> int:
        return sum(self.loss_mask)


def sequences(traj: Trajectory, masked_steps: frozenset[int] | set[int] = frozenset()) -> list[Sequence]:
    """The trajectory as training sequences; steps in `masked_steps`, and steps flagged
    `prefix_mismatch`, become context only.

    Sequences with nothing to train on (every sampled token masked) are left out.
    """
    masked = set(masked_steps) | {s.index for s in traj.steps if s.prefix_mismatch}
    return [s for s in _chain(traj, masked) if s.trained]


def _chain(traj: Trajectory, masked_steps: frozenset[int] | set[int]) -> list[Sequence]:
    out: list[Sequence] = []
    cur: Sequence | None = None
    for step in traj.steps:
        prompt = step.prompt_ids
        n = len(cur.input_ids) if cur else 0
        extends = cur is not None and not step.prefix_mismatch and len(prompt) >= n and prompt[:n] == cur.input_ids
        if extends:
            cur.input_ids.extend(prompt[n:])
            cur.loss_mask.extend([0] * (len(prompt) - n))
        else:
            if cur is not None:
                out.append(cur)
            cur = Sequence(input_ids=list(prompt), loss_mask=[0] * len(prompt), step=step.index)
        trained = 0 if step.index in masked_steps else 1
        cur.input_ids.extend(step.output_ids)
        mask = [trained] * len(step.output_ids)
        steered = set(step.steered)
        for i in step.forced:  # the grammar chose these, not the model: context only
            if 0 <= i < len(mask) and i not in steered:
                mask[i] = 0
        cur.loss_mask.extend(mask)
    if cur is not None:
        out.append(cur)
    return out


def token_stream(traj: Trajectory) -> list[int]:
    """Every token the trajectory's sequences contain, in order (what dedupe compares)."""
    stream: list[int] = []
    for seq in _chain(traj, frozenset()):
        stream.extend(seq.input_ids)
    return stream
