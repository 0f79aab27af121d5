"""Putting trajectories on the pipeline: the runtime's hook and bulk imports.

`enqueue_trajectory(path)` is what the runtime calls when it seals (or rewrites) a
trajectory file. It copies the file into the content-addressed store, then enqueues the
stage graph for it: ingest ─▶ dedupe ─▶ label, chained with `depends_on`. Job ids are
derived from the content hash, so enqueueing the same bytes again finds the jobs that
exist instead of adding new ones, and every stage skips work already recorded, so even
a duplicate job never duplicates data.

Settings (dedupe threshold, label rule, judge) come from the nearest
`tinygpt.project.json` and travel inside the payloads.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import redis
from rq.job import Job

from tinygpt.runtime.contracts.jobs import DatasetJob, DedupeJob, IngestJob, LabelJob, TrajectoryRef
from tinygpt.runtime.contracts.pipeline import PipelineSettings
from tinygpt.runtime.contracts.policy import Selection

from . import keys, stages

TRAJECTORY_SUFFIXES = (".msgpack", ".mpk", ".json")
DEFAULT_BATCH = 64


@dataclass
class Enqueued:
    """Job ids of what was enqueued; `label_jobs` are what a dataset build waits for."""

    jobs: list[str] = field(default_factory=list)
    ingest_jobs: list[str] = field(default_factory=list)
    label_jobs: list[str] = field(default_factory=list)
    files: int = 0
    # Job ids that already existed (the same content was enqueued before).
    existing: int = 0


def load_settings(project_file: str | os.PathLike | None = None) -> PipelineSettings:
    """`pipeline` of the given (or nearest) tinygpt.project.json; defaults without one."""
    from tinygpt.runtime.project import find_project, load_project

    path = Path(project_file) if project_file else find_project()
    return load_project(path).pipeline if path else PipelineSettings()


def _connection(conn: redis.Redis | None) -> redis.Redis:
    if conn is not None:
        return conn
    from .connection import connect

    return connect()


def _exists(conn: redis.Redis, job_id: str) -> bool:
    return Job.exists(job_id, connection=conn)


def _enqueue_once(conn: redis.Redis, stage: str, payload, job_id: str, depends_on: list[str], out: Enqueued) -> None:
    if _exists(conn, job_id):
        out.existing += 1
        return
    # A dependency that finished long ago (its result expired) is no longer a job: the
    # stage skips recorded work anyway, so start without waiting for it.
    live = [d for d in depends_on if _exists(conn, d)]
    stages.enqueue(conn, stage, payload, job_id=job_id, depends_on=live)


def enqueue_refs(
    refs: list[TrajectoryRef],
    conn: redis.Redis,
    settings: PipelineSettings | None = None,
    out: Enqueued | None = None,
) -> Enqueued:
    """Enqueue ingest ─▶ dedupe ─▶ label for files already in the store, as one batch."""
    settings = settings or PipelineSettings()
    out = out or Enqueued()
    if not refs:
        return out
    shas = [r.sha256 for r in refs]
    key = shas[0] if len(shas) == 1 else hashlib.sha256("".join(shas).encode()).hexdigest()
    ids = {stage: f"{stage}-{key[:40]}" for stage in ("ingest", "dedupe", "label")}
    if len(refs) == 1:
        ingest = IngestJob(trajectory_path=refs[0].path, sha256=refs[0].sha256, origin=refs[0].origin)
    else:
        ingest = IngestJob(batch=refs)
    # Marked before the job exists: a crash in between leaves a mark whose job is
    # missing, which reconcile treats as unknown (and enqueues again), never the reverse.
    conn.hset(keys.pending(), mapping={sha: ids["ingest"] for sha in shas})
    _enqueue_once(conn, "ingest", ingest, ids["ingest"], [], out)
    _enqueue_once(
        conn, "dedupe", DedupeJob(sha256s=shas, near_threshold=settings.dedupe.near_threshold), ids["dedupe"], [ids["ingest"]], out
    )
    _enqueue_once(conn, "label", LabelJob(sha256s=shas, rule=settings.label, judge=settings.judge), ids["label"], [ids["dedupe"]], out)
    out.jobs += ids.values()
    out.ingest_jobs.append(ids["ingest"])
    out.label_jobs.append(ids["label"])
    out.files += len(refs)
    return out


def enqueue_trajectory(
    path: str | os.PathLike, conn: redis.Redis | None = None, *, settings: PipelineSettings | None = None
) -> list[str]:
    """The runtime's hook: store `path` and enqueue its stage graph; returns the job ids.

    Cheap (one file copy, a few Redis round trips) and safe to call again for the same
    or a rewritten file. Raises FileNotFoundError for a missing file and
    `RedisUnavailable` when Redis is down (the file stays where it is: `tinygpt ingest`
    picks it up later).
    """
    from . import store

    own = conn is None
    conn = _connection(conn)
    try:
        sha, stored = store.put_file(path)
        ref = TrajectoryRef(path=store.to_ref(stored), sha256=sha, origin=str(path))
        out = enqueue_refs([ref], conn, settings or load_settings())
        return out.jobs
    finally:
        if own:
            conn.close()


def trajectory_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to import: the given files, and trajectory files found under directories."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TRAJECTORY_SUFFIXES)
        else:
            found.append(p)
    return found


def enqueue_files(
    paths: Iterable[str | os.PathLike],
    conn: redis.Redis | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    settings: PipelineSettings | None = None,
) -> Enqueued:
    """Bulk import: store every file and enqueue the stage graph per batch of files.

    Batches amortise the queue's per-job cost (a few ms) over many trajectories; a
    trajectory from the runtime's hook is a batch of one.
    """
    from . import store

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    conn = _connection(conn)
    settings = settings or load_settings()
    out = Enqueued()
    refs: list[TrajectoryRef] = []
    seen: set[str] = set()
    for path in trajectory_files(paths):
        sha, stored = store.put_file(path, fsync=False)
        if sha in seen:
            continue  # the same bytes twice in one import
        seen.add(sha)
        refs.append(TrajectoryRef(path=store.to_ref(stored), sha256=sha, origin=str(path)))
    # Files are on disk before any job that names them exists.
    store.sync()
    for start in range(0, len(refs), batch_size):
        enqueue_refs(refs[start : start + batch_size], conn, settings, out)
    return out


def enqueue_dataset(
    name: str,
    base_model: str,
    conn: redis.Redis | None = None,
    *,
    project: str = "default",
    settings: PipelineSettings | None = None,
    depends_on: list[str] | None = None,
    select: Selection | None = None,
) -> Job:
    """Enqueue a dataset build (after `depends_on`, e.g. an import's label jobs); with
    `select` (a build policy's selection) only the trajectories it selects.

    Returns the RQ job, so a fine-tune can be chained after it with `depends_on`.
    """
    conn = _connection(conn)
    settings = settings or load_settings()
    job = DatasetJob.from_settings(name, base_model, project, settings.dataset)
    if select is not None:
        job = msgspec.structs.replace(job, select=select)
    job_id = f"dataset-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}-{int(time.time() * 1000)}"
    live = [d for d in depends_on or [] if _exists(conn, d)]
    return stages.enqueue(conn, "dataset", job, job_id=job_id, depends_on=live)
