"""Hindsight relabels: a trajectory's sampled ids under the opening its outcome achieved.

An agent that asked for one thing and got another still produced a correct episode — of
the request that outcome answers. The client's checker knows which request that is (its
environment describes the outcome and scores it); the runtime knows the tokens. A relabel
keeps every id the model sampled, and every id fed after the opening (tool results,
earlier turns), and swaps only the opening's ids:

    step k's prompt = render(new opening) + step k's prompt[len(render(original opening)):]

That is exact, not a re-tokenization: every later prompt of a recorded episode starts with
the first prompt's ids (the session continued them token for token), and the first prompt
ends with the assistant header, a special token, so what follows never merges across the
cut. A trajectory whose steps do not chain like that is refused (409), never guessed at.

The sampled ids' logprobs are dropped: they were computed under the original opening and
describe a context the relabeled trajectory does not have.
"""

from __future__ import annotations

import msgspec

from ..contracts.trajectory import HINDSIGHT_SEPARATOR, Feedback, Trajectory
from .protocol import ApiError

# Relabels per trajectory: each costs a file and no model time, so a client could otherwise
# copy one trajectory without end.
MAX_PER_TRAJECTORY = 8


def slot_ids(trajectory_id: str) -> list[str]:
    """The ids a trajectory's relabels take, in order: a fixed few names to look at (never a
    listing of the trajectories folder, which holds every conversation ever recorded)."""
    return [f"{trajectory_id}{HINDSIGHT_SEPARATOR}{k}" for k in range(MAX_PER_TRAJECTORY)]


def relabel(traj: Trajectory, original: list[int], opening: list[int], feedback: Feedback, new_id: str) -> Trajectory:
    """`traj` with `original` (its first prompt's ids) replaced by `opening` in every step."""
    if traj.hindsight_of is not None:
        raise ApiError(409, f"trajectory {traj.id!r} is itself a relabel of {traj.hindsight_of!r}; relabel the original",
                       code="trajectory_is_relabel")
    if not traj.steps:
        raise ApiError(409, f"trajectory {traj.id!r} has no steps to relabel", code="trajectory_empty")
    if traj.steps[0].prompt_ids != original:
        raise ApiError(409, "`original` does not render to the trajectory's first prompt (send the first request's "
                       "messages exactly as they were sent)", param="original", code="opening_mismatch")
    steps = []
    for step in traj.steps:
        if step.prompt_ids[: len(original)] != original:
            raise ApiError(409, f"step {step.index} of {traj.id!r} does not continue the first prompt's ids "
                           "(the client rewrote the opening mid-session); it cannot be relabeled", code="opening_mismatch")
        steps.append(msgspec.structs.replace(
            step, prompt_ids=opening + step.prompt_ids[len(original):], logprobs=[], top_logprobs=[],
        ))
    fb = msgspec.structs.replace(feedback, trajectory_id=new_id)
    return msgspec.structs.replace(traj, id=new_id, steps=steps, feedback=[fb], hindsight_of=traj.id)
