"""Environments: the shapes a user's environment speaks, and what a run of one records.

A user's environment (`tinygpt.runtime.environments.Environment`) hands out `EnvTask`s,
sees an episode as a `Transcript`, and returns a `Reward`. `EnvRunSettings` is every knob
of `tinygpt env run` (and of a build policy that runs an environment); `EnvRunRecord`
is what the run wrote: per round the attempts, successes by task kind, rows, method and
the gate's verdict.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from .base import Contract
from .project import NAME_PATTERN, Name

ENV_VERSION = 1

Split = Literal["train", "test"]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class EnvTask(Contract):
    """One task: the conversation that opens it and whatever the checker needs.

    `messages` are sent as they are (a system prompt, worked examples, the request);
    `kind` groups tasks in every report (success per kind); `data` is the environment's
    own (the starting world, the expected outcome), JSON-able so a task can be logged.
    """

    id: str
    messages: list[dict[str, Any]]
    kind: str = "task"
    data: dict[str, Any] = {}


class Reward(Contract):
    """The checker's verdict on one episode: a reward in [0, 1] and why."""

    reward: float
    reason: str = ""


class ToolCallRecord(Contract):
    """One tool call of an episode: what the model asked for and what the tool returned."""

    name: str
    # The parsed arguments; None when they were not a JSON object (the result says why).
    arguments: dict[str, Any] | None
    result: Any = None
    # The arguments exactly as the model wrote them.
    raw_arguments: str = ""


class Transcript(Contract):
    """An episode as the checker sees it: the calls in order, the final answer, and whether
    the model stopped on its own (an answer without a call) before the turn limit."""

    calls: list[ToolCallRecord] = []
    answer: str = ""
    finished: bool = False
    turns: int = 0


class EpisodeResult(Contract):
    """One episode through the runtime: the task, the reward, and where it was recorded."""

    task_id: str
    kind: str
    reward: float
    success: bool
    reason: str
    trajectory_id: str | None
    served_by: str
    attempt: int = 0
    # None: the model chose freely; else the tool the first turn was constrained to call.
    forced_tool: str | None = None
    required_more: bool = False
    # A guided exploration: the tool forced on each turn (Environment.plan), in order.
    plan: list[str] = []
    turns: int = 0
    calls: list[str] = []
    # A failed episode recorded again under the task it did achieve (hindsight): that task's
    # kind and the relabeled trajectory's id.
    relabeled_as: str | None = None
    relabel_id: str | None = None


class EnvTrainSettings(Contract):
    """The LoRA fit of each round (the same knobs as `tinygpt train`)."""

    method: Literal["lora", "dora"] = "lora"
    steps: int = 24
    batch_size: int = 2
    learning_rate: float = 1e-4
    num_layers: int = 8
    lora_rank: int = 8


class EnvRunSettings(Contract):
    """Everything `tinygpt env run NAME` (or a build policy) decides about a run."""

    environment: Name
    # Published under this name: it travels in "model" fields and paths, like any specialist's.
    specialist: Name
    train_tasks: int = 24
    test_tasks: int = 24
    attempts: int = 4
    # Fraction of each task's attempts spent on constrained exploration: the first call
    # forced to one tool after another (a named tool_choice), alternately with a second
    # call required. What is trained on is what the model sampled under that constraint.
    explore: Unit = 0.0
    # Relabel failed episodes with the task they did achieve (Environment.hindsight) and
    # train on them too: the same sampled ids under that request's opening.
    hindsight: bool = False
    rounds: int = 1
    temperature: float = 0.7
    # None: the environment's own defaults.
    max_turns: int | None = None
    max_tokens: int | None = None
    concurrency: int = 8
    seed: int = 0
    # An episode counts as a success (and is kept for training) at this reward or above.
    success_reward: Unit = 1.0
    # "better": the candidate must solve more held-out tasks than what serves now;
    # "no-worse": it may not solve fewer. `alpha` < 1 also asks the exact sign test on
    # the tasks that flipped to say the gain is not chance (p < alpha).
    gate: Literal["better", "no-worse"] = "better"
    alpha: Unit = 1.0
    train: EnvTrainSettings = msgspec.field(default_factory=EnvTrainSettings)
    schema_version: int = ENV_VERSION

    def __post_init__(self) -> None:
        # Direct construction (flags, a build policy) skips msgspec's pattern check: repeat it.
        for field in ("environment", "specialist"):
            if not re.match(NAME_PATTERN, getattr(self, field)):
                raise ValueError(f"{field} {getattr(self, field)!r} is not a valid name (lower-case a-z, 0-9, '.', '_', '-')")
        for name in ("train_tasks", "test_tasks", "attempts", "rounds", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")


class KindCounts(Contract, array_like=True):
    successes: int
    n: int


class HeldOut(Contract):
    """Greedy success of one model on the held-out split, overall and per task kind."""

    model: str
    n: int
    successes: int
    success_rate: float
    per_kind: dict[str, KindCounts] = {}
    solved: list[str] = []


class EnvGate(Contract):
    """The held-out split as the gate: candidate vs what serves now, paired on the same tasks."""

    verdict: Literal["pass", "regression"]
    baseline: HeldOut
    candidate: HeldOut
    gained: int
    lost: int
    # Exact two-sided sign test on the flipped tasks.
    p_value: float
    reason: str = ""
    result_file: str = ""


class RoundRecord(Contract):
    """One round of expert iteration: collect with what serves, train, gate, maybe promote."""

    round: int
    collected_with: str
    attempts: int
    successes: int
    explored: int = 0
    explored_successes: int = 0
    per_kind: dict[str, KindCounts] = {}
    # Failed episodes recorded again under the task they achieved (`hindsight`).
    relabeled: int = 0
    rows: int = 0
    method: str = "lora"
    dataset: str = ""
    gate: EnvGate | None = None
    promoted: str | None = None
    note: str = ""
    seconds: dict[str, float] = {}


class EnvRunRecord(Contract):
    """What a run did (`env-run.json` in its work directory)."""

    environment: str
    specialist: str
    model: str
    project: str
    settings: EnvRunSettings
    baseline: HeldOut | None = None
    rounds: list[RoundRecord] = []
    final: HeldOut | None = None
    note: str = ""
    schema_version: int = ENV_VERSION
