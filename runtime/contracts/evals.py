"""Eval suites, reports and the gate's verdict.

A suite is declared in `tinygpt.project.json` (or the file `gate.suites_file` points to);
its rows live in a JSON Lines file (see README, "Eval gate"). The gate writes one
`GateResult` per run; `tinygpt eval-gate --update-baseline` records a `BaselineRecord`
in `tinygpt.eval-baseline.json` next to the project file.
"""

from __future__ import annotations

from typing import Any, Literal

from .base import Contract

EVAL_VERSION = 1

SuiteKind = Literal["tool_call", "exact_match", "json_schema", "latency", "custom", "environment"]
Direction = Literal["higher", "lower"]
# "threshold": worse than the baseline by more than `threshold` fails the suite;
# "significant": only a statistically clear loss fails it, whatever its size (a suite the
# specialist need not improve on, but may not get worse at: no forgetting).
Regression = Literal["threshold", "significant"]
# Promotion rules a gate (or a build policy) can name; each adds shipped suites
# (workers/evalgate/rules.py): "no-forgetting" adds the general tool-calling suite.
PromotionRule = Literal["no-forgetting"]


class EvalSuite(Contract):
    """One suite as declared in tinygpt.project.json."""

    name: str
    kind: SuiteKind
    # JSON Lines rows, relative to the project file (for format="bfcl": the question file).
    # Not for kind "environment": the gate sets it to the environment's module file.
    data: str = ""
    # Kind "environment": the name of an environment of the project file (or a bundled one);
    # its held-out ("test") split is the suite, each task one episode through the runtime.
    # options: {"tasks": N (default 24), "skip": K (default 0): tasks K..K+N-1 of the split}.
    environment: str | None = None
    metric: str = "accuracy"
    # Which way is better. Optional for the metrics the gate knows (accuracy, tokens_per_s,
    # *_ms); any other metric without a direction is a configuration error.
    direction: Direction | None = None
    # Largest tolerated regression of the candidate against the baseline (metric units).
    threshold: float = 0.0
    # Absolute floor (or ceiling for direction=lower), checked always and the only check
    # when there is no baseline.
    minimum: float | None = None
    # `module:function` for kind="custom".
    scorer: str | None = None
    passes: int = 1
    temperature: float = 0.0
    max_tokens: int = 256
    # "bfcl": Berkeley Function Calling Leaderboard files (questions in `data`, possible
    # answers in `answers`, default <data dir>/possible_answer/<data file name>).
    format: Literal["jsonl", "bfcl"] = "jsonl"
    answers: str | None = None
    # Scorer options, e.g. {"strings": "exact"} for tool_call, {"normalize": ["strip", "lower"]}.
    options: dict[str, Any] = {}
    # Seeds of sampled passes derive from this, the item id and the pass index.
    seed: int = 0
    regression: Regression = "threshold"

    def __post_init__(self) -> None:
        if self.kind == "environment":
            if not self.environment:
                raise ValueError('kind "environment" needs `environment` (the name of one of the project\'s environments)')
        elif not self.data:
            raise ValueError(f"missing required field `data` (the rows file of kind {self.kind!r})")


class ItemResult(Contract):
    id: str
    score: float
    passes: list[float] = []
    output: str = ""
    detail: str = ""
    # Line of the row in the suite's data file (1-based; 0 when unknown).
    line: int = 0


class KindScore(Contract):
    """One task kind of a suite whose items have kinds (environment suites)."""

    n: int
    mean: float


class SuiteReport(Contract):
    suite: str
    metric: str
    direction: Direction
    n: int
    passes: int
    mean: float
    std: float
    stderr: float
    # 95% interval of the metric's value (of the mean, or of the percentile for *_p95_* metrics).
    ci95: tuple[float, float]
    items: list[ItemResult] = []
    # The metric's value when it is not the mean of the items (e.g. a p95 latency).
    value: float | None = None
    # Content hash of everything the numbers depend on (model, adapter, suite data, settings).
    key: str = ""
    seconds: float = 0.0
    # Per task kind (environment suites): the same items, grouped.
    per_kind: dict[str, KindScore] = {}

    @property
    def metric_value(self) -> float:
        return self.mean if self.value is None else self.value


class EvalReport(Contract):
    model: str
    model_digest: str
    schema_version: int = EVAL_VERSION
    adapter: str | None = None
    adapter_digest: str | None = None
    suites: list[SuiteReport] = []
    created_at: float = 0.0

    def suite(self, name: str) -> SuiteReport | None:
        return next((s for s in self.suites if s.suite == name), None)


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
    metric: str = ""
    direction: Direction = "higher"
    minimum: float | None = None
    # Candidate minus baseline: two-sided p-value and 95% interval of the difference.
    p_value: float | None = None
    delta_ci95: tuple[float, float] | None = None


class GateResult(Contract):
    verdict: Literal["pass", "regression", "error"]
    candidate: EvalReport
    schema_version: int = EVAL_VERSION
    baseline: EvalReport | None = None
    suites: list[SuiteVerdict] = []
    cache_key: str = ""
    message: str = ""
    extra: dict[str, Any] = {}
    # What the candidate was compared with and why ("pinned weather@3", "base model", "none: ...").
    baseline_source: str = ""


class BaselineRecord(Contract):
    """A candidate recorded on purpose as the baseline of `subject` (a specialist, or "@base")."""

    subject: str
    report: EvalReport
    recorded_at: float = 0.0


class BaselineFile(Contract):
    """`tinygpt.eval-baseline.json`: one record per subject, written by --update-baseline."""

    schema_version: int = EVAL_VERSION
    baselines: list[BaselineRecord] = []
