"""Putting back on the pipeline what Redis does not know: sealed trajectory files.

The files on disk are the truth and Redis can be rebuilt from them. A sealed file is
known to Redis when its sha256 has a record (ingested or quarantined: `keys.files()`)
or an ingest job that still exists (`keys.pending()`). Anything else - the whole
directory after a FLUSHALL, an external Redis without persistence or a restore from an
older backup, a file sealed while Redis was down - is stored and enqueued again.
Every stage skips work already recorded, so a file enqueued twice is counted once, and
a second reconcile right after the first finds everything pending and adds nothing.

`tinygpt up` reconciles on start and whenever Redis comes back; `tinygpt ingest
--reconcile` does it by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rq.job import Job

from tinygpt.runtime.contracts.jobs import TrajectoryRef
from tinygpt.runtime.contracts.pipeline import PipelineSettings
from tinygpt.runtime.hashing import sha256_file

from . import keys
from .pipeline import DEFAULT_BATCH, TRAJECTORY_SUFFIXES, Enqueued, enqueue_refs

# Redis round trips look up this many files at once.
LOOKUP_CHUNK = 1000


@dataclass
class Reconciled:
    """What a reconcile found: files scanned, already known, still pending, enqueued."""

    scanned: int = 0
    known: int = 0
    pending: int = 0
    enqueued: Enqueued = field(default_factory=Enqueued)

    @property
    def summary(self) -> str:
        return (f"{self.scanned} sealed trajectory file(s): {self.known} recorded, {self.pending} pending, "
                f"{self.enqueued.files} put back on the pipeline")


def sealed_files(root: str | os.PathLike) -> list[Path]:
    """The sealed trajectory files directly under `root` (open ones live in `open/`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.suffix in TRAJECTORY_SUFFIXES and p.is_file())


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None  # reopened by the runtime (a session went on) since it was listed


def unknown_files(conn: redis.Redis, files: list[Path], out: Reconciled) -> list[tuple[Path, str]]:
    """The files (with their sha256) Redis has neither a record nor a live ingest job for."""
    hashed = [(p, sha) for p in files if (sha := _sha256(p)) is not None]
    unknown: list[tuple[Path, str]] = []
    for start in range(0, len(hashed), LOOKUP_CHUNK):
        chunk = hashed[start : start + LOOKUP_CHUNK]
        shas = [sha for _, sha in chunk]
        with conn.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.files(), shas)
            pipe.hmget(keys.pending(), shas)
            recorded, pending = pipe.execute()
        with conn.pipeline(transaction=False) as pipe:
            for job_id in pending:
                if job_id is not None:
                    pipe.exists(Job.key_for(job_id.decode()))
            alive = iter(pipe.execute())
        for (path, sha), rec, job_id in zip(chunk, recorded, pending):
            if rec is not None:
                out.known += 1
            elif job_id is not None and next(alive):
                out.pending += 1
            else:
                unknown.append((path, sha))
    return unknown


def reconcile(
    roots: list[str | os.PathLike],
    conn: redis.Redis,
    *,
    settings: PipelineSettings | None = None,
    batch_size: int = DEFAULT_BATCH,
    files: list[Path] | None = None,
) -> Reconciled:
    """Enqueue ingest ▶ dedupe ▶ label for every sealed file under `roots` Redis does not
    know (or, given `files`, for those of them it does not know)."""
    from . import store

    out = Reconciled()
    if files is None:
        files = [p for root in roots for p in sealed_files(root)]
    out.scanned = len(files)
    refs: list[TrajectoryRef] = []
    for path, _ in unknown_files(conn, files, out):
        try:
            sha, stored = store.put_file(path, fsync=False)
        except FileNotFoundError:
            continue
        refs.append(TrajectoryRef(path=store.to_ref(stored), sha256=sha, origin=str(path)))
    if not refs:
        return out
    store.sync()  # on disk before any job names them
    settings = settings or PipelineSettings()
    for start in range(0, len(refs), batch_size):
        enqueue_refs(refs[start : start + batch_size], conn, settings, out.enqueued)
    return out
