"""Training data built from trajectories: token ids and a loss mask, never text.

Version 2 adds what preference training needs: rows of failed episodes
(`desirable=False`, in the manifest's `undesirable` file), a split on each pair, and the
manifest fields naming both. Version-1 files still decode (the new fields default).
"""

from __future__ import annotations

from typing import Literal

from .base import Contract

DATASET_VERSION = 2

Split = Literal["train", "valid", "test"]


class DatasetRow(Contract):
    """One training sequence. `loss_mask[i]` is 1 only where `input_ids[i]` was sampled
    by the model itself; prompts, tool results and masked-out turns are 0."""

    id: str
    input_ids: list[int]
    loss_mask: list[int]
    schema_version: int = DATASET_VERSION
    trajectory_id: str | None = None
    step: int | None = None
    split: Split = "train"
    weight: float = 1.0
    # False for a failed episode (an undesirable example for KTO); SFT never trains on these.
    desirable: bool = True
    # The label stage's reward of the episode, when it had one.
    reward: float | None = None


class PreferencePair(Contract):
    """Two answers to the same prompt whose rewards differ (for preference training)."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_reward: float
    rejected_reward: float
    chosen_trajectory: str
    rejected_trajectory: str
    schema_version: int = DATASET_VERSION
    # The chosen trajectory's split, so validation pairs never share a prompt with training ones.
    split: Split = "train"


class DatasetFile(Contract):
    path: str
    sha256: str
    rows: int


class DatasetManifest(Contract):
    """Names exactly what a fine-tune trained on: every file by content hash."""

    name: str
    digest: str
    base_model: str
    schema_version: int = DATASET_VERSION
    base_digest: str = ""
    splits: dict[str, DatasetFile] = {}
    trajectories: int = 0
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    created_at: float = 0.0
    project: str = "default"
    # Preference pairs (chosen / rejected answers to one prompt), when any were found.
    pairs: DatasetFile | None = None
    # Rows of failed episodes (label-dropped with a reward), each with its own split field.
    undesirable: DatasetFile | None = None
    # Trajectories left out, by reason (near / exact duplicate, label drop, ...).
    dropped: dict[str, int] = {}
    # The sha256 of every trajectory file the rows came from, sorted.
    sources: list[str] = []
