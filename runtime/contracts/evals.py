"""Eval suites, reports and the gate's verdict."""

from __future__ import annotations

from typing import Any, Literal

from .base import Contract

EVAL_VERSION = 1

SuiteKind = Literal["tool_call", "exact_match", "json_schema", "latency", "custom"]
Direction = Literal["higher", "lower"]


class EvalSuite(Contract):
    """One suite as declared in tinygpt.project.json."""

    name: str
    kind: SuiteKind
    data: str
    metric: str = "accuracy"
    direction: Direction = "higher"
    # Largest tolerated regression of the candidate against the baseline (metric units).
    threshold: float = 0.0
    # Absolute floor (or ceiling for direction=lower) used when there is no baseline.
    minimum: float | None = None
    # `module:function` for kind="custom".
    scorer: str | None = None
    passes: int = 1
    temperature: float = 0.0
    max_tokens: int = 256


class ItemResult(Contract):
    id: str
    score: float
    passes: list[float] = []
    output: str = ""
    detail: str = ""


class SuiteReport(Contract):
    suite: str
    metric: str
    direction: Direction
    n: int
    passes: int
    mean: float
    std: float
    stderr: float
    ci95: tuple[float, float]
    items: list[ItemResult] = []


class EvalReport(Contract):
    model: str
    model_digest: str
    schema_version: int = EVAL_VERSION
    adapter: str | None = None
    adapter_digest: str | None = None
    suites: list[SuiteReport] = []
    created_at: float = 0.0


class SuiteVerdict(Contract):
    suite: str
    candidate: float
    baseline: float | None
    delta: float | None
    threshold: float
    passed: bool
    # True when the 95% intervals say the difference is not noise.
    significant: bool = False
    reason: str = ""


class GateResult(Contract):
    verdict: Literal["pass", "regression", "error"]
    candidate: EvalReport
    schema_version: int = EVAL_VERSION
    baseline: EvalReport | None = None
    suites: list[SuiteVerdict] = []
    cache_key: str = ""
    message: str = ""
    extra: dict[str, Any] = {}
