"""What `tinygpt status` shows about the queue and the data pipeline, as plain data.

Reads only: Redis INFO, the RQ registries, the pipeline's records and the dataset
manifests on disk. No MLX, and nothing here starts a server: without REDIS_URL it looks
for a running embedded redis-server and reports when there is none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import redis
from rq import Worker

from tinygpt.runtime import paths
from tinygpt.runtime.contracts.dataset import DatasetManifest
from tinygpt.runtime.contracts.jobs import JobProgress
from tinygpt.runtime.contracts.pipeline import DedupeRecord, FileRecord, LabelRecord

from . import keys, progress, stages
from .failed import DeadLetter, dead_letters
from .serializer import MsgpackSerializer


@dataclass
class RedisInfo:
    url: str
    reachable: bool
    error: str = ""
    version: str = ""
    memory: str = ""
    aof: bool = False


@dataclass
class QueueDepth:
    name: str
    queued: int
    running: int
    deferred: int
    scheduled: int
    failed: int
    finished: int


@dataclass
class Running:
    job_id: str
    queue: str
    stage: str
    worker: str
    started_at: datetime | None
    # What the job last reported about itself (training and evaluation do), if anything.
    progress: JobProgress | None = None


@dataclass
class WorkerRow:
    name: str
    queues: str
    state: str
    job: str


@dataclass
class TrajectoryRow:
    trajectory_id: str
    project: str
    steps: int
    tokens: int
    ingested_at: float
    dedupe: str
    label: str


@dataclass
class QuarantineRow:
    origin: str
    sha256: str
    reason: str
    at: float


@dataclass
class DatasetRowInfo:
    name: str
    digest: str
    trajectories: int
    rows: int
    tokens: int
    trained_tokens: int
    pairs: int
    dropped: dict[str, int]
    created_at: float


@dataclass
class Overview:
    redis: RedisInfo
    queues: list[QueueDepth] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    running: list[Running] = field(default_factory=list)
    failed: list[DeadLetter] = field(default_factory=list)
    failed_total: int = 0
    quarantine: list[QuarantineRow] = field(default_factory=list)
    quarantine_total: int = 0
    recent: list[TrajectoryRow] = field(default_factory=list)
    datasets: list[DatasetRowInfo] = field(default_factory=list)


def find_redis() -> tuple[str, redis.Redis | None, str]:
    """(shown URL, client or None, why not) without starting anything."""
    from tinygpt.runtime.redact import redact

    from .connection import URL_ENV
    from .embedded import find_running

    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        try:
            server = find_running(paths.redis_dir())
        except Exception as e:  # a stale or foreign pidfile: report it, do not fail status
            return f"embedded ({paths.redis_dir()})", None, str(e)
        if server is None:
            return f"embedded ({paths.redis_dir()})", None, "not running (starts on first use, or run `tinygpt redis`)"
        url = server.url
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        client.close()
        return redact(url), None, redact(f"{type(e).__name__}: {e}")
    return redact(url), client, ""


def _queue_depths(conn: redis.Redis) -> list[QueueDepth]:
    out = []
    for short in stages.QUEUES:
        q = stages.get_queue(conn, short)
        out.append(
            # Counting without RQ's cleanup: looking must not retry or expire anything.
            QueueDepth(
                name=short,
                queued=q.count,
                running=q.started_job_registry.get_job_count(cleanup=False),
                deferred=q.deferred_job_registry.get_job_count(cleanup=False),
                scheduled=q.scheduled_job_registry.get_job_count(cleanup=False),
                failed=q.failed_job_registry.get_job_count(cleanup=False),
                finished=q.finished_job_registry.get_job_count(cleanup=False),
            )
        )
    return out


def _running(conn: redis.Redis) -> list[Running]:
    out = []
    for short in stages.QUEUES:
        q = stages.get_queue(conn, short)
        for job_id in q.started_job_registry.get_job_ids(cleanup=False):
            try:
                job = stages.fetch_job(conn, job_id)
            except Exception:
                continue
            stage = next((s.name for s in stages.STAGES.values() if s.func == job.func_name), job.func_name or "?")
            out.append(Running(job_id, short, stage, job.worker_name or "", job.started_at))
    reported = progress.read(conn, [r.job_id for r in out])
    for r in out:
        r.progress = reported.get(r.job_id)
    return out


def pipeline_workers(conn: redis.Redis) -> list[WorkerRow]:
    out = []
    for w in Worker.all(connection=conn, serializer=MsgpackSerializer):
        names = [q.name for q in w.queues]
        if not any(n in stages.QUEUES.values() for n in names):
            continue
        job = w.get_current_job_id() or ""
        out.append(WorkerRow(w.name, ",".join(n.removeprefix("tinygpt:") for n in names), str(w.get_state()), job))
    return out


def _decode(raw: bytes | None, kind):
    return msgspec.msgpack.decode(raw, type=kind) if raw else None


def _recent(conn: redis.Redis, limit: int) -> list[TrajectoryRow]:
    shas = [s.decode() for s in conn.zrevrange(keys.recent(), 0, limit - 1)]
    records = [_decode(r, FileRecord) for r in conn.hmget(keys.files(), shas)] if shas else []
    rows = []
    for rec in records:
        if rec is None:
            continue
        d = _decode(conn.hget(keys.dedupe(rec.project), rec.sha256), DedupeRecord)
        lab = _decode(conn.hget(keys.labels(rec.project), rec.sha256), LabelRecord)
        dedupe = "pending" if d is None else (d.verdict if d.verdict in ("kept", "superseded") else f"{d.verdict} of {d.of}")
        if lab is None:
            label = "pending" if dedupe in ("pending", "kept") or dedupe.startswith("near") else "-"
        else:
            reward = "-" if lab.reward is None else f"{lab.reward:.2f}"
            label = f"keep {reward}" if lab.keep else f"drop {reward} ({lab.reason})"
        rows.append(TrajectoryRow(rec.trajectory_id, rec.project, rec.steps, rec.tokens, rec.ingested_at, dedupe, label))
    return rows


def _quarantine(conn: redis.Redis, limit: int) -> list[QuarantineRow]:
    shas = [s.decode() for s in conn.zrevrange(keys.quarantine(), 0, limit - 1)]
    records = [_decode(r, FileRecord) for r in conn.hmget(keys.files(), shas)] if shas else []
    return [QuarantineRow(r.origin or r.path, r.sha256, r.reason, r.ingested_at) for r in records if r is not None]


def _dataset_info(m: DatasetManifest) -> DatasetRowInfo:
    return DatasetRowInfo(
        m.name, m.digest[:16], m.trajectories, m.rows, m.tokens, m.trained_tokens, m.pairs.rows if m.pairs else 0, dict(m.dropped), m.created_at
    )


def datasets_on_disk() -> list[DatasetRowInfo]:
    """Latest build of every dataset under `<home>/datasets/` (readable without Redis)."""
    root = paths.home() / "datasets"
    out = []
    if root.is_dir():
        for manifest in sorted(root.glob("*/manifest.json")):
            try:
                out.append(_dataset_info(msgspec.json.decode(manifest.read_bytes(), type=DatasetManifest)))
            except (msgspec.DecodeError, msgspec.ValidationError, OSError):
                continue
    return out


def collect(limit: int = 10) -> Overview:
    """Everything `tinygpt status` shows about the pipeline; never raises for a down Redis."""
    url, conn, why = find_redis()
    ov = Overview(redis=RedisInfo(url=url, reachable=conn is not None, error=why), datasets=datasets_on_disk())
    if conn is None:
        return ov
    try:
        info = conn.info()
        ov.redis.version = str(info.get("redis_version", ""))
        ov.redis.memory = str(info.get("used_memory_human", ""))
        ov.redis.aof = bool(info.get("aof_enabled", 0))
        ov.queues = _queue_depths(conn)
        ov.workers = pipeline_workers(conn)
        ov.running = _running(conn)
        ov.failed_total = sum(q.failed for q in ov.queues)
        ov.failed = dead_letters(conn, limit)
        ov.quarantine_total = conn.zcard(keys.quarantine())
        ov.quarantine = _quarantine(conn, limit)
        ov.recent = _recent(conn, limit)
    except redis.RedisError as e:
        ov.redis.reachable = False
        ov.redis.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return ov
