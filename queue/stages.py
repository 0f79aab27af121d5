"""Queues and the stage graph: which queue runs each stage, its timeout and its retries.

Separate queues keep kinds of work from blocking each other: a fine-tune that runs for
an hour on `train` never holds up ingest on `data`. Each stage has a timeout (the job
fails past it) and retries with growing backoff; a job that keeps failing lands in the
queue's failed registry, the dead-letter queue, with its reason (`tinygpt status`,
`tinygpt jobs`).

    ingest ─▶ dedupe ─▶ label          per batch of trajectory files (depends_on)
    dataset ─▶ finetune ─▶ eval ─▶ publish    per specialist build
    environment                              rounds on an environment (collect ▶ … ▶ publish inside)
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue, Retry
from rq.job import Job

from .serializer import MsgpackSerializer

# Short name (what `tinygpt worker --queues` takes) -> RQ queue name.
QUEUES: dict[str, str] = {"data": "tinygpt:data", "train": "tinygpt:train", "eval": "tinygpt:eval"}
# At most one worker per machine serves these (MLX training wants the whole machine).
EXCLUSIVE = frozenset({"train"})

# Results stay readable for a day; failed jobs (the dead letters) for thirty.
RESULT_TTL_S = 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Stage:
    name: str
    # Import path of the thin RQ job (tinygpt.workers.jobs), resolved by the worker: a
    # string, so the queue never imports the stages that run on it.
    func: str
    queue: str
    timeout_s: int
    retries: int
    # Seconds before each retry; the last one repeats.
    backoff_s: tuple[int, ...]
    # Former import paths of `func`: jobs already in Redis under an old name still run
    # (as `func`). Add the old path here whenever an entry point moves.
    aliases: tuple[str, ...] = ()

    def retry(self) -> Retry:
        return Retry(max=self.retries, interval=list(self.backoff_s))


def _moved(func: str) -> tuple[str, ...]:
    """Where the entry point `func` lived before: the jobs moved from the queue to the stages."""
    return (f"tinygpt.queue.tasks.{func}",)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ingest", "tinygpt.workers.jobs.ingest", "data", timeout_s=600, retries=3, backoff_s=(5, 30, 120), aliases=_moved("ingest")),
        Stage("dedupe", "tinygpt.workers.jobs.dedupe", "data", timeout_s=900, retries=3, backoff_s=(5, 30, 120), aliases=_moved("dedupe")),
        # A judge call can be slow, and a judge that is down should get time to come back.
        Stage("label", "tinygpt.workers.jobs.label", "data", timeout_s=3600, retries=4, backoff_s=(10, 60, 300, 900), aliases=_moved("label")),
        Stage("dataset", "tinygpt.workers.jobs.dataset", "data", timeout_s=3600, retries=2, backoff_s=(10, 60), aliases=_moved("dataset")),
        # After the eval gate, on its queue: package, index, notify (seconds; retries cover a Redis blip).
        # Training holds the machine for hours; a retry only helps after a crash (a killed
        # worker), never after bad input, which fails permanently (TrainingError).
        Stage("finetune", "tinygpt.workers.jobs.finetune", "train", timeout_s=12 * 3600, retries=1, backoff_s=(60,), aliases=_moved("finetune")),
        Stage("eval", "tinygpt.workers.jobs.evalgate", "eval", timeout_s=7200, retries=1, backoff_s=(60,), aliases=_moved("evalgate")),
        Stage("publish", "tinygpt.workers.jobs.publish", "eval", timeout_s=600, retries=3, backoff_s=(5, 30, 120), aliases=_moved("publish")),
        # Rounds of collect ▶ train ▶ gate ▶ publish on a user's environment: it trains, so it
        # takes the machine (`train`); a broken environment fails at once (PermanentError).
        Stage("environment", "tinygpt.workers.jobs.environment", "train", timeout_s=24 * 3600, retries=1, backoff_s=(60,),
              aliases=_moved("environment")),
    )
}


def entry_points() -> dict[str, str]:
    """Every function name a worker may call -> the stage function it runs now.

    Derived from STAGES, so a new stage (or a moved one, with its old path in `aliases`)
    is covered without a second list to keep in step; see `admission`.
    """
    allowed = {alias: s.func for s in STAGES.values() for alias in s.aliases}
    allowed.update({s.func: s.func for s in STAGES.values()})
    return allowed


def queue_name(short: str) -> str:
    """`data` -> `tinygpt:data`; a full RQ queue name passes through."""
    if short in QUEUES:
        return QUEUES[short]
    if short in QUEUES.values():
        return short
    raise ValueError(f"unknown queue {short!r}: choose from {', '.join(QUEUES)}")


def get_queue(conn: redis.Redis, short: str) -> Queue:
    """The RQ queue `short` with the project's serializer."""
    return Queue(queue_name(short), connection=conn, serializer=MsgpackSerializer)


def fetch_job(conn: redis.Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)


def enqueue(
    conn: redis.Redis,
    stage: str,
    payload,
    *,
    job_id: str,
    depends_on: list[str] | None = None,
    pipeline=None,
    description: str | None = None,
) -> Job:
    """Enqueue one stage job with its queue, timeout, retries and TTLs."""
    spec = STAGES[stage]
    return get_queue(conn, spec.queue).enqueue_call(
        spec.func,
        args=(payload,),
        job_id=job_id,
        timeout=spec.timeout_s,
        retry=spec.retry(),
        depends_on=depends_on or None,
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        description=description or f"{stage} {job_id}",
        pipeline=pipeline,
    )
