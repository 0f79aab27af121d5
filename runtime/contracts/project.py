"""`tinygpt.project.json`: the base model, pinned specialists, registries and gate."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .base import Contract
from .evals import EvalSuite, PromotionRule
from .tool_mode import ToolMode
from .pipeline import PipelineSettings
from .policy import BuildPolicy

PROJECT_VERSION = 1
PROJECT_FILE = "tinygpt.project.json"

# Specialist names travel in "model" fields and paths: keep them boring.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, description="lower-case name: a-z, 0-9, '.', '_', '-'")]
Sha256 = Annotated[str, msgspec.Meta(pattern=SHA256_PATTERN, description="64 lower-case hex digits")]


class SpecialistPin(Contract, omit_defaults=True):
    # Written back as the user wrote it: a pin without a policy gets no `"build": null`.
    name: Name
    # An exact version, or "*" for the newest published version that passes the gate.
    version: str = "*"
    # Digest of the package lock; when set, any other content is refused.
    sha256: Sha256 | None = None
    # When and how `tinygpt up` builds a new version of it by itself (None: only by hand).
    build: BuildPolicy | None = None
    # How requests for it see their tools (None: the server's --tool-mode): "full" schemas
    # in the prompt or a "deferred" one-line index (runtime/grammar/deferred.py). Serve it
    # in the mode it was trained and gated in.
    tool_mode: ToolMode | None = None


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


# ---------------------------------------------------------------- environments (issue 17)

# `package.module:ClassName`: imported by the worker from the project file it trusts, never
# from a queue payload (a job names the environment only).
EntryPoint = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
                                         description="package.module:ClassName")]


class EnvironmentRef(Contract):
    """A task environment the factory can train on (`tinygpt env list|check|run NAME`)."""

    name: Name
    entry: EntryPoint


# ---------------------------------------------------------------- the project file


class ProjectPins(Contract):
    name: Name
    schema_version: int = PROJECT_VERSION
    base_model: str = "smollm2-135m-instruct"
    specialists: list[SpecialistPin] = []
    # Directories or file:// / http(s):// base URLs with an index.json.
    registries: list[str] = msgspec.field(default_factory=lambda: ["specialists"])
    # Pull from plain http:// registries on other hosts without pinned sha256s. Off: there,
    # the index, lock and files come unauthenticated from one server, so a hash check
    # against its own lock proves nothing; use https:// or pin `sha256` instead.
    allow_insecure_http: bool = False
    eval_suites: list[EvalSuite] = []
    gate: GateSettings = msgspec.field(default_factory=GateSettings)
    # Dedupe threshold, label keep / drop rule, judge and dataset split for the data pipeline.
    pipeline: PipelineSettings = msgspec.field(default_factory=PipelineSettings)
    # Environments: tools, tasks and a checker in the user's own module (issue 17).
    environments: list[EnvironmentRef] = []

    def __post_init__(self) -> None:
        # Types and patterns are checked by msgspec; cross-field rules live here.
        for field, names in (("specialists", [p.name for p in self.specialists]), ("eval_suites", [s.name for s in self.eval_suites]),
                             ("environments", [e.name for e in self.environments])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate names in `{field}`: {', '.join(dupes)}")
        suites = {s.name for s in self.eval_suites}
        for i, pin in enumerate(self.specialists):
            if pin.build is None:
                continue
            where = f"`$.specialists[{i}].build.gate.suites`"
            # A policy publishes by itself: it must be gated on something.
            if not suites and self.gate.suites_file is None:
                raise ValueError(f"{where}: the build policy of {pin.name} needs eval suites to gate on (`eval_suites` is empty)")
            unknown = [n for n in pin.build.gate.suites if n not in suites]
            if unknown and self.gate.suites_file is None:
                raise ValueError(f"{where}: no eval suite named {', '.join(unknown)} (have: {', '.join(sorted(suites))})")

    def environment(self, name: str) -> EnvironmentRef | None:
        return next((e for e in self.environments if e.name == name), None)

    def pin(self, name: str) -> SpecialistPin | None:
        return next((p for p in self.specialists if p.name == name), None)

    def policies(self) -> dict[str, BuildPolicy]:
        """Specialist name -> its build policy, with the selection's project filled in."""
        import msgspec

        out = {}
        for p in self.specialists:
            if p.build is not None:
                select = p.build.select if p.build.select.project else msgspec.structs.replace(p.build.select, project=self.name)
                out[p.name] = msgspec.structs.replace(p.build, select=select)
        return out
