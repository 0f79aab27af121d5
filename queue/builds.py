"""A specialist build on the queue: finetune ─▶ eval ─▶ publish, chained with depends_on.

`enqueue_build` is what turns a dataset into a published specialist without anyone
watching: the fine-tune runs on the `train` queue (one per machine), the gate on `eval`,
and publish only packages a candidate whose gate result says "pass" for exactly these
weights — a regression fails the publish job permanently, with the gate's reason, in
the dead-letter registry (`tinygpt jobs`).

A build's id is the hash of what defines it (specialist, base model, dataset, method,
hyperparameters, seed, project, registry), so enqueueing the same build twice finds the
jobs that exist instead of training twice; its files live in `<home>/builds/<name>/<id>/`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis
from rq.job import Job

from tinygpt.runtime import paths
from tinygpt.runtime.contracts.jobs import EvalJob, FinetuneJob, PublishJob

from . import stages


@dataclass
class Build:
    """The ids of a build's jobs (finetune, eval, publish) and where its files go."""

    build_id: str
    root: Path
    jobs: dict[str, str] = field(default_factory=dict)
    existing: int = 0

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def gate_result(self) -> Path:
        return self.root / "eval" / "gate-result.json"


def build_id(**spec: Any) -> str:
    """A stable id for the build a spec describes (sorted JSON, sha256, 16 hex digits)."""
    return hashlib.sha256(msgspec.json.encode(spec, order="sorted")).hexdigest()[:16]


def job_ids(specialist: str, build_id: str) -> dict[str, str]:
    """The job id of each stage of a build (stable: enqueueing the build again finds them)."""
    return {stage: f"{stage}-{specialist}-{build_id}" for stage in ("finetune", "eval", "publish")}


def project_registry(registries: list[str], project_file: str | Path) -> str:
    """Where a project's builds publish: its first registry (a relative folder is relative to the pin file)."""
    registry = registries[0] if registries else "specialists"
    if "://" not in registry and not Path(registry).is_absolute():
        registry = str(Path(project_file).resolve().parent / registry)
    return registry


def enqueue_build(
    conn: redis.Redis,
    *,
    specialist: str,
    base_model: str,
    dataset_dir: str | Path,
    project_file: str | Path,
    registry: str | Path,
    method: str = "lora",
    hyperparameters: dict[str, Any] | None = None,
    seed: int = 0,
    version: str = "",
    teacher_model: str | None = None,
    depends_on: list[str] | None = None,
    gate: dict[str, Any] | None = None,
) -> Build:
    """Enqueue finetune ▶ eval ▶ publish for one specialist build (after `depends_on`,
    e.g. the dataset job that writes `dataset_dir`). `gate` holds a build policy's
    promotion rule (EvalJob's `suites`, `threshold`, `require_significance`)."""
    gate = {k: v for k, v in (gate or {}).items() if v not in (None, [])}
    hyperparameters = dict(hyperparameters or {})
    dataset_dir, project_file = str(Path(dataset_dir).resolve()), str(Path(project_file).resolve())
    registry = str(registry) if "://" in str(registry) else str(Path(registry).resolve())
    bid = build_id(specialist=specialist, base_model=base_model, dataset=dataset_dir, method=method,
                   hyperparameters=hyperparameters, seed=seed, project=project_file, registry=registry,
                   version=version, teacher=teacher_model, **({"gate": gate} if gate else {}))
    build = Build(build_id=bid, root=paths.subdir("builds") / specialist / bid)
    finetune = FinetuneJob(
        specialist=specialist, base_model=base_model, dataset_dir=dataset_dir, output_dir=str(build.adapter_dir),
        method=method, hyperparameters=hyperparameters, teacher_model=teacher_model, seed=seed,
    )
    evaluate = EvalJob(project_file=project_file, specialist=specialist, candidate_dir=str(build.adapter_dir),
                       output_dir=str(build.gate_result.parent), **gate)
    publish = PublishJob(specialist=specialist, version=version, candidate_dir=str(build.adapter_dir),
                         registry=registry, gate_result=str(build.gate_result))
    previous = [d for d in depends_on or [] if Job.exists(d, connection=conn)]
    for stage, payload in (("finetune", finetune), ("eval", evaluate), ("publish", publish)):
        job_id = job_ids(specialist, bid)[stage]
        build.jobs[stage] = job_id
        if Job.exists(job_id, connection=conn):
            build.existing += 1
        else:
            stages.enqueue(conn, stage, payload, job_id=job_id, depends_on=previous,
                           description=f"{stage} {specialist} (build {bid})")
        previous = [job_id]
    return build
