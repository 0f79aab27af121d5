"""The data pipeline's settings and the records its stages keep in Redis.

Settings live in `tinygpt.project.json` under `"pipeline"` and travel inside job
payloads, so a worker on another host applies exactly the rule the enqueuer read.
Records are what each stage decided about one trajectory file (keyed by the file's
sha256); `tinygpt status` and the dataset stage read them back.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .base import Contract

PIPELINE_VERSION = 1

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

# The reward dimensions the label stage computes; rules and weights may name only these.
DIMENSIONS = ("tool_validity", "tool_outcome", "feedback", "judge")
Dimension = Literal["tool_validity", "tool_outcome", "feedback", "judge"]


class DedupeSettings(Contract):
    # Estimated Jaccard similarity (over token shingles) at or above which a trajectory is
    # dropped as a near duplicate of one kept earlier. The LSH index finds candidates
    # reliably from about 0.6 up; lower thresholds miss pairs.
    near_threshold: Fraction = 0.9


class JudgeSettings(Contract):
    """An optional LLM judge. "rate" scores the final answer 1-10; "pairwise" compares it
    with the first answer recorded for the same prompt."""

    mode: Literal["off", "rate", "pairwise"] = "off"
    # "openai": any OpenAI-compatible server (the TinyGPT runtime by default);
    # "mlx": load `model` in-process with mlx-lm.
    backend: Literal["openai", "mlx"] = "openai"
    # Base URL of the OpenAI-compatible API (None: $TINYGPT_JUDGE_URL, else the local runtime).
    url: str | None = None
    # The model name sent to the server, or the mlx-lm path / repo for "mlx".
    model: str | None = None
    timeout_s: float = 120.0


class LabelRule(Contract):
    """Turns reward dimensions into keep / drop.

    The reward is the weighted mean of the dimensions that apply to a trajectory (each in
    [0, 1]; a trajectory without tool calls has no tool dimensions). It is kept when the
    reward reaches `min_reward` and every dimension in `require` that applies reaches its
    minimum."""

    weights: dict[Dimension, Annotated[float, msgspec.Meta(ge=0.0)]] = {}
    min_reward: Fraction = 0.5
    require: dict[Dimension, Fraction] = msgspec.field(default_factory=lambda: {"tool_validity": 1.0})
    # No dimension applies (plain chat, no feedback, no judge): keep or drop? Dropped by
    # default: a chat nobody scored says nothing about whether it was good. A build
    # policy may still opt in (`select.keep_unlabelled`).
    keep_unlabelled: bool = False
    # Share of a trajectory's steps that must be clean (not cut off by max_tokens, not a
    # degenerate loop, not repeating an identical tool call); flagged steps are never
    # trained on (context only), and below this the whole trajectory is dropped.
    min_quality: Fraction = 0.5


class DatasetSettings(Contract):
    valid_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    seed: int = 0
    # Rewards of two answers to one prompt must differ by this much to make a pair.
    pair_margin: Fraction = 0.2
    # Steps whose tool calls failed validation contribute context only (loss mask 0).
    mask_invalid_tool_calls: bool = True


class PipelineSettings(Contract):
    dedupe: DedupeSettings = msgspec.field(default_factory=DedupeSettings)
    label: LabelRule = msgspec.field(default_factory=LabelRule)
    judge: JudgeSettings = msgspec.field(default_factory=JudgeSettings)
    dataset: DatasetSettings = msgspec.field(default_factory=DatasetSettings)


# --- records (Redis values, msgpack) ----------------------------------------------------

FileStatus = Literal["ingested", "quarantined"]


class FileRecord(Contract):
    """What ingest found in one trajectory file (keyed by the file's sha256)."""

    sha256: str
    status: FileStatus
    path: str
    schema_version: int = PIPELINE_VERSION
    # The file's path before it was copied into the store.
    origin: str = ""
    # Why it was quarantined (empty when ingested).
    reason: str = ""
    trajectory_id: str = ""
    project: str = ""
    base_model: str = ""
    base_digest: str = ""
    steps: int = 0
    tokens: int = 0
    sampled_tokens: int = 0
    # Feedback items inside the file: the runtime rewrites a sealed trajectory when
    # feedback arrives, and the version with more feedback supersedes the other.
    feedback: int = 0
    created_at: float = 0.0
    ingested_at: float = 0.0


DedupeVerdict = Literal["kept", "exact", "near", "superseded"]


class DedupeRecord(Contract):
    """The dedupe decision for one ingested file."""

    sha256: str
    trajectory_id: str
    verdict: DedupeVerdict
    schema_version: int = PIPELINE_VERSION
    # The trajectory this one duplicates (exact / near), or the current version's sha256
    # (superseded).
    of: str = ""
    similarity: float = 0.0
    decided_at: float = 0.0


class LabelRecord(Contract):
    """Reward dimensions (each recorded separately) and the keep / drop decision."""

    sha256: str
    trajectory_id: str
    keep: bool
    reward: float | None
    schema_version: int = PIPELINE_VERSION
    # Only the dimensions that apply; values in [0, 1].
    dimensions: dict[str, float] = {}
    reason: str = ""
    # sha256 of each step's prompt ids: answers to the same prompt share a key (pairs).
    prompt_keys: list[str] = []
    # Steps with a tool call that failed validation (the dataset can mask them out).
    invalid_steps: list[int] = []
    labelled_at: float = 0.0
    # Steps trained on as context only, and why (cut off, a loop, a repeated tool call).
    flags: dict[int, list[str]] = {}
    # Share of clean steps (None: no steps).
    quality: float | None = None
    # No reward dimension applied (a plain chat nobody scored): kept only where the label
    # rule or a build policy opts in.
    no_signal: bool = False
    # Training rows it yields (after masking), and the facts build policies select on:
    # who served it ("base" or a specialist), tool names offered or called, request metadata.
    rows: int = 0
    served_by: list[str] = []
    tools: list[str] = []
    tags: dict[str, str] = {}
