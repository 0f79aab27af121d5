"""Build policies: when recorded traffic becomes a new version of a specialist, by itself.

A policy sits on a specialist's entry in `tinygpt.project.json` (`"build": {...}`). While
`tinygpt up` runs, its autopilot (queue/autopilot.py) counts the kept training rows the
label stage produced for the policy's selection; when the trigger fires it enqueues
dataset ▶ finetune ▶ eval gate ▶ publish for that specialist. A version that passes the
gate is published and pins that accept it (`"*"`) hot-swap it in; one that fails is kept
with its report under `<home>/builds/` and never served.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .base import Contract
from .specialist import Method
from .training import TrainingConfig

Positive = Annotated[int, msgspec.Meta(ge=1)]


class Selection(Contract):
    """Which recorded trajectories feed the specialist (every condition given must hold)."""

    # None: the project of this pin file (its `name`), the project `tinygpt up` records under.
    project: Annotated[str | None, msgspec.Meta(description="project the trajectories were recorded under (default: this pin file's name)")] = None
    served_by: Annotated[list[str], msgspec.Meta(
        description='served by any of these: "base" (the base model) or a specialist name; empty: any')] = []
    tools: Annotated[list[str], msgspec.Meta(description="offered or called any of these tool names; empty: any")] = []
    metadata: Annotated[dict[str, str], msgspec.Meta(
        description="request metadata pairs (OpenAI `metadata`) one request of the trajectory carried, all of them")] = {}
    keep_unlabelled: Annotated[bool, msgspec.Meta(
        description="also train on trajectories with no signal (no tool call, feedback or judge); default: never")] = False

    def matches(self, *, project: str, served_by: list[str], tools: list[str], tags: dict[str, str]) -> bool:
        """Whether a labelled trajectory with these facts is selected (`project` resolved by the caller)."""
        if self.project is not None and project != self.project:
            return False
        if self.served_by and not set(self.served_by) & set(served_by):
            return False
        if self.tools and not set(self.tools) & set(tools):
            return False
        return all(tags.get(k) == v for k, v in self.metadata.items())


class Trigger(Contract):
    """When a build starts: enough new rows, not too soon after the last one, not too often."""

    min_new_rows: Annotated[Positive, msgspec.Meta(
        description="kept training rows of the selection not in the last build's dataset")] = 50
    min_interval_s: Annotated[float, msgspec.Meta(ge=0, description="seconds since the last build started")] = 3600.0
    max_per_day: Annotated[int, msgspec.Meta(ge=0, description="builds started in any 24 hours (0: never automatically)")] = 4


class Promotion(Contract):
    """The eval gate a candidate must pass to be published (and so hot-swapped by `*` pins)."""

    suites: Annotated[list[str], msgspec.Meta(description="names of the project's eval suites to gate on; empty: all")] = []
    threshold: Annotated[Annotated[float, msgspec.Meta(ge=0)] | None, msgspec.Meta(
        description="largest tolerated regression against the baseline, for every suite (default: each suite's own)")] = None
    require_significance: Annotated[bool | None, msgspec.Meta(
        description="count a regression only when it is statistically clear (default: gate.require_significance)")] = None


class BuildPolicy(Contract):
    """How and when the daemon builds a new version of this specialist by itself."""

    select: Selection = msgspec.field(default_factory=Selection)
    trigger: Trigger = msgspec.field(default_factory=Trigger)
    # Any method the training contract accepts (tinygpt train --method).
    method: Method = "lora"
    training: TrainingConfig = msgspec.field(default_factory=TrainingConfig)
    teacher: Annotated[str | None, msgspec.Meta(description="teacher model for distillation methods")] = None
    seed: int = 0
    gate: Promotion = msgspec.field(default_factory=Promotion)

    def hyperparameters(self) -> dict:
        """The training settings as a FinetuneJob carries them (only what differs from the defaults)."""
        default = msgspec.to_builtins(TrainingConfig())
        return {k: v for k, v in msgspec.to_builtins(self.training).items() if default.get(k) != v}

