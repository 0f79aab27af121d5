"""One payload Struct per queue job. Jobs carry ids and paths, never arrays or models.

Payloads cross process boundaries as msgpack (the queue's own serializer), so a
worker on another host decodes exactly this shape or refuses the job.
"""

from __future__ import annotations

from typing import Any, Literal

from .base import Contract
from .specialist import Method

JOBS_VERSION = 1


class IngestJob(Contract):
    # Where the recorded trajectory lives (a msgpack/JSON file), and its content hash.
    trajectory_path: str
    schema_version: int = JOBS_VERSION
    sha256: str = ""
    project: str = "default"


class DedupeJob(Contract):
    trajectory_id: str
    schema_version: int = JOBS_VERSION
    project: str = "default"
    near_threshold: float = 0.9


class LabelJob(Contract):
    trajectory_id: str
    schema_version: int = JOBS_VERSION
    project: str = "default"
    judge_model: str | None = None


class DatasetJob(Contract):
    name: str
    base_model: str
    schema_version: int = JOBS_VERSION
    project: str = "default"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0


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


class PublishJob(Contract):
    specialist: str
    version: str
    candidate_dir: str
    registry: str
    gate_result: str
    schema_version: int = JOBS_VERSION


JobPayload = IngestJob | DedupeJob | LabelJob | DatasetJob | FinetuneJob | EvalJob | PublishJob
JOB_KINDS: dict[str, type[Contract]] = {
    "ingest": IngestJob,
    "dedupe": DedupeJob,
    "label": LabelJob,
    "dataset": DatasetJob,
    "finetune": FinetuneJob,
    "eval": EvalJob,
    "publish": PublishJob,
}
