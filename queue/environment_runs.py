"""An environment run on the queue: one `environment` job on `train`, named by what defines it.

`enqueue_environment` is what `tinygpt env run --queue` and a build policy call. The job
carries the project file's path, the environment's *name* and the run's settings; the
worker resolves the entry point from that project file. Its id is the hash of the project
file's path and the settings, so enqueueing the same run twice finds the job that exists.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import redis
from rq.job import Job

from tinygpt.runtime import paths
from tinygpt.runtime.contracts.environments import EnvRunSettings
from tinygpt.runtime.contracts.jobs import EnvironmentJob

from . import stages


def enqueue_environment(conn: redis.Redis, project_file: str | Path, settings: EnvRunSettings,
                        work_dir: str | Path | None = None) -> tuple[str, Path, bool]:
    """Enqueue the run; returns (job id, work dir, True when it was already enqueued)."""
    project_file = str(Path(project_file).resolve())
    digest = hashlib.sha256(msgspec.json.encode([project_file, settings], order="sorted")).hexdigest()[:16]
    work = Path(work_dir).resolve() if work_dir else paths.subdir("env") / settings.environment / digest
    job_id = f"environment-{settings.environment}-{digest}"
    if Job.exists(job_id, connection=conn):
        return job_id, work, True
    payload = EnvironmentJob(project_file=project_file, settings=settings, work_dir=str(work))
    stages.enqueue(conn, "environment", payload, job_id=job_id,
                   description=f"environment {settings.environment} → {settings.specialist} ({settings.rounds} round(s))")
    return job_id, work, False
