"""`tinygpt.project.json`: the base model, pinned specialists, registries and gate."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .base import Contract
from .evals import EvalSuite, PromotionRule
from .pipeline import PipelineSettings

PROJECT_VERSION = 1
PROJECT_FILE = "tinygpt.project.json"

# Specialist names travel in "model" fields and paths: keep them boring.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, description="lower-case name: a-z, 0-9, '.', '_', '-'")]
Sha256 = Annotated[str, msgspec.Meta(pattern=SHA256_PATTERN, description="64 lower-case hex digits")]


class SpecialistPin(Contract):
    name: Name
    # An exact version, or "*" for the newest published version that passes the gate.
    version: str = "*"
    # Digest of the package lock; when set, any other content is refused.
    sha256: Sha256 | None = None


class GateSettings(Contract):
    # Compare against the currently pinned version ("pinned") or the bare base model.
    baseline: str = "pinned"
    # Refuse a candidate when the whole-gate confidence says it is worse.
    require_significance: bool = False
    cache: bool = True
    # A JSON file (relative to the project file) holding more suites: a list of EvalSuite.
    suites_file: str | None = None
    # Promotion rules every candidate must also pass, e.g. ["no-forgetting"]: no
    # significant loss on the shipped general tool-calling suite.
    rules: list[PromotionRule] = []


class ProjectPins(Contract):
    name: Name
    schema_version: int = PROJECT_VERSION
    base_model: str = "smollm2-135m-instruct"
    specialists: list[SpecialistPin] = []
    # Directories or file:// / http(s):// base URLs with an index.json.
    registries: list[str] = msgspec.field(default_factory=lambda: ["specialists"])
    eval_suites: list[EvalSuite] = []
    gate: GateSettings = msgspec.field(default_factory=GateSettings)
    # Dedupe threshold, label keep / drop rule, judge and dataset split for the data pipeline.
    pipeline: PipelineSettings = msgspec.field(default_factory=PipelineSettings)

    def __post_init__(self) -> None:
        # Types and patterns are checked by msgspec; cross-field rules live here.
        for field, names in (("specialists", [p.name for p in self.specialists]), ("eval_suites", [s.name for s in self.eval_suites])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate names in `{field}`: {', '.join(dupes)}")

    def pin(self, name: str) -> SpecialistPin | None:
        return next((p for p in self.specialists if p.name == name), None)
