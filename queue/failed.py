"""The dead-letter queue: jobs that failed for good, with their reasons; retry or drop them.

RQ keeps a failed registry per queue. A job lands there when it raised with no retries
left (or a `PermanentError`), timed out on its last try, or was abandoned by a killed
worker on its last try. Its dependents stay deferred until it is retried and succeeds,
or are dropped with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from . import stages


@dataclass
class DeadLetter:
    job_id: str
    queue: str
    stage: str
    reason: str
    failed_at: datetime | None
    traceback: str


def reason_of(text: str | None) -> str:
    """The last line of a traceback, without the module path of the exception class."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines:
        return "(no reason recorded)"
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    if sep and "." in head and " " not in head:
        last = f"{head.rsplit('.', 1)[1]}: {rest}"
    return last


def _stage_of(job: Job) -> str:
    name = job.func_name or ""
    for stage in stages.STAGES.values():
        if stage.func == name:
            return stage.name
    return name.rsplit(".", 1)[-1]


def _traceback(job: Job) -> str:
    result = job.latest_result()
    if result is not None and result.exc_string:
        return result.exc_string
    return job._exc_info or ""


def dead_letters(conn: redis.Redis, limit: int | None = None) -> list[DeadLetter]:
    """Failed jobs across the pipeline's queues, newest first."""
    found: list[DeadLetter] = []
    for short in stages.QUEUES:
        registry = stages.get_queue(conn, short).failed_job_registry
        # Scored by expiry, so the newest failures come first in descending order.
        ids = registry.get_job_ids(0, limit - 1, desc=True, cleanup=False) if limit else registry.get_job_ids(cleanup=False)
        for job_id in ids:
            try:
                job = stages.fetch_job(conn, job_id)
            except NoSuchJobError:
                continue
            text = _traceback(job)
            found.append(DeadLetter(job_id, short, _stage_of(job), reason_of(text), job.ended_at, text))
    found.sort(key=lambda d: d.failed_at or datetime.min, reverse=True)
    return found[:limit] if limit else found


def _select(conn: redis.Redis, job_ids: list[str] | None) -> list[DeadLetter]:
    letters = dead_letters(conn)
    if job_ids is None:
        return letters
    by_id = {d.job_id: d for d in letters}
    missing = [j for j in job_ids if j not in by_id]
    if missing:
        raise ValueError(f"not in the failed registry: {', '.join(missing)} (see `tinygpt jobs list`)")
    return [by_id[j] for j in job_ids]


def retry(conn: redis.Redis, job_ids: list[str] | None = None) -> list[str]:
    """Requeue failed jobs (all when `job_ids` is None) with a fresh retry budget."""
    done = []
    for letter in _select(conn, job_ids):
        job = stages.fetch_job(conn, letter.job_id)
        spec = stages.STAGES.get(letter.stage)
        if spec is not None:
            job.retries_left = spec.retries
        try:
            stages.get_queue(conn, letter.queue).failed_job_registry.requeue(job)
        except InvalidJobOperation:
            continue  # someone else requeued or dropped it meanwhile
        done.append(letter.job_id)
    return done


def _delete_tree(conn: redis.Redis, job_id: str) -> None:
    # RQ deletes one level of dependents; a stage graph is deeper (dedupe -> label).
    try:
        job = stages.fetch_job(conn, job_id)
    except NoSuchJobError:
        return
    for dependent in job.dependent_ids:
        _delete_tree(conn, dependent)
    job.delete()


def drop(conn: redis.Redis, job_ids: list[str] | None = None) -> list[str]:
    """Delete failed jobs (all when `job_ids` is None) and every job waiting on them."""
    done = []
    for letter in _select(conn, job_ids):
        _delete_tree(conn, letter.job_id)
        stages.get_queue(conn, letter.queue).failed_job_registry.remove(letter.job_id)
        done.append(letter.job_id)
    return done
