"""One payload Struct per queue job. Jobs carry ids and paths, never arrays or models.

Payloads cross process boundaries as msgpack (the queue's own serializer), so a
worker on another host decodes exactly this shape or refuses the job.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .base import Contract
from .environments import EnvRunSettings
from .evals import PromotionRule
from .pipeline import DatasetSettings, JudgeSettings, LabelRule
from .policy import Selection
from .specialist import Method

JOBS_VERSION = 1


class TrajectoryRef(Contract, array_like=True):
    """One trajectory file in a batch: where it is and the sha256 of its bytes."""

    path: str
    sha256: str
    # Where the file came from before it was copied into the store (for messages).
    origin: str = ""


class IngestJob(Contract):
    # Where the recorded trajectory lives (a msgpack/JSON file), and its content hash.
    # Bulk imports leave these empty and list many files in `batch` instead.
    trajectory_path: str = ""
    schema_version: int = JOBS_VERSION
    sha256: str = ""
    project: str = "default"
    batch: list[TrajectoryRef] = []
    origin: str = ""

    def __post_init__(self) -> None:
        if bool(self.trajectory_path) == bool(self.batch):
            raise ValueError("an ingest job names either `trajectory_path` or a `batch` of files, not both or neither")

    def refs(self) -> list[TrajectoryRef]:
        """Every file this job covers, in order."""
        if self.trajectory_path:
            return [TrajectoryRef(path=self.trajectory_path, sha256=self.sha256, origin=self.origin)]
        return list(self.batch)


class DedupeJob(Contract):
    # The trajectory's current version, or (pipeline jobs) the sha256 of each ingested
    # file: those are known when the stage graph is enqueued, the ids only after ingest.
    trajectory_id: str = ""
    schema_version: int = JOBS_VERSION
    project: str = "default"
    near_threshold: float = 0.9
    sha256s: list[str] = []

    def __post_init__(self) -> None:
        if bool(self.trajectory_id) == bool(self.sha256s):
            raise ValueError("a dedupe job names either `trajectory_id` or `sha256s`, not both or neither")


class LabelJob(Contract):
    trajectory_id: str = ""
    schema_version: int = JOBS_VERSION
    project: str = "default"
    # Shorthand for `judge.model` (kept for payloads written before `judge` existed).
    judge_model: str | None = None
    sha256s: list[str] = []
    rule: LabelRule = msgspec.field(default_factory=LabelRule)
    judge: JudgeSettings = msgspec.field(default_factory=JudgeSettings)

    def __post_init__(self) -> None:
        if bool(self.trajectory_id) == bool(self.sha256s):
            raise ValueError("a label job names either `trajectory_id` or `sha256s`, not both or neither")


class DatasetJob(Contract):
    name: str
    base_model: str
    schema_version: int = JOBS_VERSION
    project: str = "default"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    pair_margin: float = 0.2
    mask_invalid_tool_calls: bool = True
    # A build policy's selection: only the trajectories it selects (None: every one kept).
    select: Selection | None = None

    @classmethod
    def from_settings(cls, name: str, base_model: str, project: str, settings: DatasetSettings) -> DatasetJob:
        return cls(
            name=name,
            base_model=base_model,
            project=project,
            valid_fraction=settings.valid_fraction,
            test_fraction=settings.test_fraction,
            seed=settings.seed,
            pair_margin=settings.pair_margin,
            mask_invalid_tool_calls=settings.mask_invalid_tool_calls,
        )


class FinetuneJob(Contract):
    specialist: str
    base_model: str
    dataset_dir: str
    output_dir: str
    schema_version: int = JOBS_VERSION
    method: Method = "lora"
    hyperparameters: dict[str, Any] = {}
    teacher_model: str | None = None
    seed: int = 0


class EvalJob(Contract):
    project_file: str
    specialist: str
    candidate_dir: str
    output_dir: str
    schema_version: int = JOBS_VERSION
    # A build policy's promotion rule: these suites only (empty: all), a threshold for
    # every suite and require_significance instead of the project's (None: as declared).
    suites: list[str] = []
    threshold: float | None = None
    require_significance: bool | None = None
    # Promotion rules on top of the project's gate.rules (a build policy names them).
    rules: list[PromotionRule] = []


class PublishJob(Contract):
    specialist: str
    version: str
    candidate_dir: str
    registry: str
    gate_result: str
    schema_version: int = JOBS_VERSION


class EnvironmentJob(Contract):
    """Run an environment: collect through a runtime, train, gate on its held-out split, publish.

    Carries the environment's *name* only: the worker reads its entry point from the
    project file, which it trusts, and never imports anything a payload names."""

    project_file: str
    settings: EnvRunSettings
    # Where the run's files go (trajectories, adapters, gate results, env-run.json).
    work_dir: str
    schema_version: int = JOBS_VERSION


JobPayload = IngestJob | DedupeJob | LabelJob | DatasetJob | FinetuneJob | EvalJob | PublishJob | EnvironmentJob
JOB_KINDS: dict[str, type[Contract]] = {
    "ingest": IngestJob,
    "dedupe": DedupeJob,
    "label": LabelJob,
    "dataset": DatasetJob,
    "finetune": FinetuneJob,
    "eval": EvalJob,
    "publish": PublishJob,
    "environment": EnvironmentJob,
}


class JobProgress(Contract):
    """How far a long job (training, evaluation) is, as its worker last reported it.

    Written by the worker under `tinygpt:progress:<job_id>` and read by `tinygpt up`'s
    screen and `tinygpt status` in other processes; `updated` (epoch seconds) tells a
    stalled job from a moving one.
    """

    job_id: str
    stage: str
    done: int
    total: int
    schema_version: int = JOBS_VERSION
    # What the bar is about ("fileops: train 24 steps") and its unit ("step", "answer").
    label: str = ""
    unit: str = ""
    # Latest numbers worth a glance: loss, tokens/s.
    detail: str = ""
    started: float = 0.0
    updated: float = 0.0
