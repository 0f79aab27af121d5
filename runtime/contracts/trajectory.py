"""Token-preserving trajectories: what the model was fed and what it sampled, id for id.

A trajectory is one conversation (session) with the runtime. Each request the client
makes is a `Step`; the step keeps the exact prompt ids the engine fed (not a
re-tokenization of the text) and the exact ids it sampled, so the trainer learns from
precisely what happened. Large, so stored as msgpack; JSON works too.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .base import Contract

TRAJECTORY_VERSION = 4

# A hindsight relabel's id is its original's id, this, and its slot (0-7).
HINDSIGHT_SEPARATOR = "-h-"


def lineage(trajectory_id: str) -> str:
    """The trajectory a hindsight relabel was made from; any other trajectory's own id.
    A relabel repeats its original's sampled ids by design, so the two are never duplicates."""
    return trajectory_id.split(HINDSIGHT_SEPARATOR, 1)[0]


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


class SamplingParams(Contract):
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] = []
    logprobs: bool = False
    top_logprobs: int = 0


class ToolCall(Contract):
    """A call as the model sampled it; `arguments` is the JSON text, verbatim."""

    id: str
    name: str
    arguments: str
    # Checked against the function's parameter schema when the step was recorded.
    valid: bool | None = None


class ToolResult(Contract):
    """A tool message the client sent back for an earlier call."""

    tool_call_id: str
    content: str
    # Parsed from the result when it reports success or failure; None when unknown.
    ok: bool | None = None


class Timings(Contract):
    queued_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    prompt_tokens: int = 0
    # Prompt tokens served from the prefix cache instead of prefilled.
    cached_tokens: int = 0


class TopLogprob(Contract, array_like=True):
    """One alternative at a position: (token id, logprob). Array-like keeps it small."""

    token: int
    logprob: float


class Step(Contract):
    index: int
    prompt_ids: list[int]
    output_ids: list[int]
    # log p of each sampled id, aligned with output_ids (0.0 for a forced id).
    logprobs: list[float] = []
    top_logprobs: list[list[TopLogprob]] = []
    text: str = ""
    tool_calls: list[ToolCall] = []
    # Tool results for this step's calls, attached when the next request brings them.
    tool_results: list[ToolResult] = []
    finish_reason: FinishReason = "stop"
    timings: Timings = msgspec.field(default_factory=Timings)
    # The chat template could not reproduce the earlier turns' ids exactly (e.g. it
    # re-renders an assistant turn differently from what was sampled): training masks
    # the earlier turns of this step out instead of learning from drifted ids.
    prefix_mismatch: bool = False
    # "tools", "json_schema", "json_object" or None when decoding was unconstrained.
    constraint: str | None = None
    # Indices into output_ids of ids the grammar forced (its only continuation, fed in one
    # step, never sampled): model input the model did not choose, trained like prompt
    # tokens (loss mask 0). Absent in files from before version 2: nothing was forced.
    forced: list[int] = []
    # How the tools were shown (version 3; older files: "full"): "full" lists every schema in
    # the prompt; "deferred" lists one line per tool, and the chosen tool's schema is fed after
    # a call's name (runtime/grammar/deferred.py). `inserted`: indices into output_ids of the
    # ids carrying that fed schema, phase 2's input; always also in `forced` (loss mask 0).
    tool_mode: str = "full"
    inserted: list[int] = []
    # Version 4: indices into output_ids of the forced ids a named `tool_choice` imposed (the
    # call's opening and the function's name): the client's choice, not the grammar's only
    # continuation. A kept trajectory trains on them like sampled ids (workers/tokens.py): an
    # exploring agent that forced a tool and succeeded found the call the task needed, and
    # masking the name would teach the arguments but never the choice.
    steered: list[int] = []
    # Who produced this step: a session may switch specialist (or version) between turns,
    # so the trajectory-level adapter fields describe its first step only.
    model: str | None = None
    adapter_version: str | None = None
    adapter_digest: str | None = None
    sampling: SamplingParams | None = None
    # The request's OpenAI `metadata` (without `session_id`): tags build policies select on.
    metadata: dict[str, str] = {}
    request_id: str = ""
    created_at: float = 0.0


class Feedback(Contract):
    """A reward or label attached to a trajectory after the fact (by id)."""

    trajectory_id: str
    reward: float | None = None
    label: str | None = None
    step: int | None = None
    source: str = "client"
    comment: str = ""
    created_at: float = 0.0


class Trajectory(Contract):
    id: str
    base_model: str
    base_digest: str
    project: str = "default"
    session: str | None = None
    schema_version: int = TRAJECTORY_VERSION
    adapter: str | None = None
    adapter_version: str | None = None
    adapter_digest: str | None = None
    sampling: SamplingParams = msgspec.field(default_factory=SamplingParams)
    # The tool definitions offered (OpenAI "tools" objects), kept to validate calls later.
    tools: list[dict[str, Any]] = []
    steps: list[Step] = []
    feedback: list[Feedback] = []
    created_at: float = 0.0
    # Version 4: set on a hindsight relabel (`POST /v1/trajectories/{id}/hindsight`): the
    # trajectory whose sampled ids these are, under the opening their outcome achieved.
    hindsight_of: str | None = None
