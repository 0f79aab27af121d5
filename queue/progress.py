"""Progress of long jobs, shared through Redis so another process can draw the bar.

Training and evaluation run for minutes inside a worker process; `tinygpt up`'s screen
and `tinygpt status` run elsewhere. The job writes a small `JobProgress` record under
`tinygpt:progress:<job id>` (throttled: a few writes a second at most) and the readers
fetch the records of the jobs RQ says are running. Records expire, so a killed worker
leaves nothing stale behind for long, and a Redis hiccup never fails the job: progress
is for people, the job's result is what matters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import msgspec
import redis

from tinygpt.runtime.contracts.jobs import JobProgress

from . import keys

log = logging.getLogger(__name__)

# A running job refreshes its record at least this often while it moves; an older one
# is dropped by Redis (the job finished, died, or stalled far longer than any step).
TTL_SECONDS = 900

_decoder = msgspec.json.Decoder(JobProgress)


class JobReporter:
    """Writes one job's progress; call it as often as you like."""

    def __init__(self, conn: redis.Redis, job_id: str, stage: str, *, label: str = "", unit: str = "",
                 min_interval: float = 0.5):
        self.conn, self.key = conn, keys.progress(job_id)
        self.record = JobProgress(job_id=job_id, stage=stage, done=0, total=0, label=label, unit=unit,
                                  started=time.time())
        self.min_interval = min_interval
        self._last_write = 0.0
        self._failed = False

    def __call__(self, done: int, total: int, detail: str = "") -> None:
        now = time.time()
        self.record = msgspec.structs.replace(self.record, done=done, total=total, detail=detail or self.record.detail,
                                              updated=now)
        # Always write the first and the last tick: a bar that never starts or never
        # reaches its end misleads more than a slightly late one.
        if done not in (0, total) and now - self._last_write < self.min_interval:
            return
        self._last_write = now
        try:
            self.conn.set(self.key, msgspec.json.encode(self.record), ex=TTL_SECONDS)
        except redis.RedisError as e:
            if not self._failed:  # say it once, not on every step
                log.warning("progress of job %s not recorded: %s", self.record.job_id, e)
            self._failed = True

    def clear(self) -> None:
        try:
            self.conn.delete(self.key)
        except redis.RedisError:
            pass  # it expires on its own


def for_current_job(stage: str, *, label: str = "", unit: str = "") -> JobReporter | None:
    """A reporter for the RQ job running in this process, or None outside a job."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        return None
    return JobReporter(job.connection, job.id, stage, label=label, unit=unit)


@contextmanager
def reporting(stage: str, *, label: str = "", unit: str = "") -> Iterator[JobReporter | None]:
    """`for_current_job` for the span of a job: its record goes when the job ends, however it ends."""
    tick = for_current_job(stage, label=label, unit=unit)
    try:
        yield tick
    finally:
        if tick is not None:
            tick.clear()


def read(conn: redis.Redis, job_ids: Iterable[str]) -> dict[str, JobProgress]:
    """The latest progress of each job that has one (unreadable records are skipped)."""
    ids = list(job_ids)
    if not ids:
        return {}
    out = {}
    for job_id, raw in zip(ids, conn.mget([keys.progress(i) for i in ids])):
        if raw is None:
            continue
        try:
            out[job_id] = _decoder.decode(raw)
        except msgspec.DecodeError:
            log.debug("unreadable progress record for job %s", job_id)
    return out
