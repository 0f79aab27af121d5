"""Reliability with real worker processes against a real redis-server.

- a worker SIGKILLed mid-job: another worker retries the job, nothing is lost or doubled;
- redis-server restarted with jobs queued: every job is still there (AOF) and completes;
- 1,000 malformed trajectories among valid ones: every valid one reaches the dataset,
  every bad one is quarantined with its reason;
- two workers on one queue, joined through REDIS_URL over TCP as a worker on another
  host would: each job runs exactly once.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import pytest
import redis

from tests.fixtures.trajectories.synth import MALFORMED_KINDS, Synth, encode, malformed
from tinygpt.queue import keys, pipeline, stages
from tinygpt.queue.embedded import EmbeddedRedis
from tinygpt.queue.worker import child_command
from tinygpt.runtime.contracts.dataset import DatasetRow
from tinygpt.runtime.contracts.pipeline import FileRecord, LabelRule, PipelineSettings
from tinygpt.queue import store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Unscored plain chats count too: these tests are about losing and doubling nothing.
DEFAULTS = PipelineSettings(label=LabelRule(keep_unlabelled=True))
# Short leases and frequent cleanups so a killed worker's job comes back in seconds.
FAST = ["--heartbeat", "0.5", "--grace", "2", "--maintenance", "1", "--log-level", "WARNING"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    return home


def worker(url: str, home: Path, *args: str) -> subprocess.Popen:
    """A `tinygpt worker` process that finds Redis through REDIS_URL, like one on another host."""
    env = {**os.environ, "REDIS_URL": url, "TINYGPT_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(child_command(["--queues", "data", "--burst", *FAST, *args]), env=env, cwd=REPO)


def wait_exit(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=600)  # a hang must fail the test, not the CI job
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def clean_corpus(tmp: Path, n: int, seed: int) -> dict[str, Path]:
    """`n` distinct, label-keepable trajectories written as files: id -> path."""
    synth = Synth(seed=seed, near_fraction=0, exact_fraction=0, invalid_call_rate=0)
    out = {}
    src = tmp / f"src-{seed}"
    src.mkdir()
    for t in synth.corpus(n):
        t = msgspec.structs.replace(t, feedback=[])  # a thumbs-down would (rightly) drop it
        path = src / f"{t.id}.msgpack"
        path.write_bytes(encode(t))
        out[t.id] = path
    return out


def dataset_rows(result) -> list[DatasetRow]:
    rows = []
    for split in ("train", "valid", "test"):
        data = (Path(result.path) / f"{split}.jsonl").read_bytes()
        rows += [msgspec.json.decode(line, type=DatasetRow) for line in data.splitlines() if line]
    return rows


def test_sigkilled_worker_job_is_retried_by_another_and_nothing_is_lost_or_doubled(redis_client, redis_url, home, tmp_path):
    n = 1500
    corpus = clean_corpus(tmp_path, n, seed=21)
    enq = pipeline.enqueue_files(list(corpus.values()), redis_client, batch_size=n, settings=DEFAULTS)
    ds = pipeline.enqueue_dataset("killed", "smollm2-135m-instruct", redis_client, settings=DEFAULTS, depends_on=enq.label_jobs)
    (ingest_id,) = enq.ingest_jobs
    started = stages.get_queue(redis_client, "data").started_job_registry

    a = worker(redis_url, home)
    # Kill once ingest has recorded some chunks but not all: a kill in the middle of the job.
    while redis_client.hlen(keys.files()) < 64:
        assert a.poll() is None, "worker A exited before it could be killed"
        time.sleep(0.005)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    recorded_at_kill = redis_client.hlen(keys.files())
    assert 64 <= recorded_at_kill < n and ingest_id in started.get_job_ids(cleanup=False)

    b = worker(redis_url, home)
    assert wait_exit(b) == 0
    job = stages.fetch_job(redis_client, ingest_id)
    assert job.get_status() == "finished" and str(b.pid) in job.worker_name
    assert job.retries_left == stages.STAGES["ingest"].retries - 1  # the abandoned try counted
    assert redis_client.hlen(keys.files()) == n
    assert redis_client.hlen(keys.dedupe("default")) == n and redis_client.hlen(keys.labels("default")) == n
    result = stages.fetch_job(redis_client, ds.id).return_value()
    rows = dataset_rows(result)
    ids = [r.trajectory_id for r in rows]
    assert len(ids) == len(set(ids)) == n and set(ids) == set(corpus)  # none lost, none doubled


def test_jobs_queued_before_a_redis_restart_survive_it_and_complete(home, tmp_path):
    corpus = clean_corpus(tmp_path, 300, seed=22)
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        conn = server.client()
        assert conn.config_get("appendonly")["appendonly"] == "yes"
        enq = pipeline.enqueue_files(list(corpus.values()), conn, batch_size=50, settings=DEFAULTS)
        ds = pipeline.enqueue_dataset("restart", "smollm2-135m-instruct", conn, settings=DEFAULTS, depends_on=enq.label_jobs)
        q = stages.get_queue(conn, "data")
        before = (q.count, q.deferred_job_registry.count, sorted(q.get_job_ids()))
        assert before[:2] == (6, 13)  # 6 ingest queued; dedupe, label and dataset waiting
        conn.close()
        url = server.url
        server.stop()
        server = EmbeddedRedis(tmp_path / "redis").start()
        assert server.url == url
        conn = server.client()
        q = stages.get_queue(conn, "data")
        assert (q.count, q.deferred_job_registry.count, sorted(q.get_job_ids())) == before
        assert wait_exit(worker(url, home)) == 0
        assert all(stages.fetch_job(conn, j).get_status() == "finished" for j in enq.jobs + [ds.id])
        result = stages.fetch_job(conn, ds.id).return_value()
        assert result.trajectories == 300 and {r.trajectory_id for r in dataset_rows(result)} == set(corpus)
        conn.close()
    finally:
        server.stop()


def test_a_thousand_malformed_files_are_quarantined_and_every_valid_one_is_trained_on(redis_client, redis_url, home, tmp_path):
    corpus = clean_corpus(tmp_path, 300, seed=23)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = {}
    for i in range(1000):
        kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
        path = bad_dir / f"{kind}-{i}.msgpack"
        path.write_bytes(malformed(kind, i))
        bad[path] = store.sha256_bytes(path.read_bytes())
    assert len(set(bad.values())) == 1000
    # Interleave good and bad files, as a runtime with a buggy client would produce them.
    files = [p for pair in zip(list(corpus.values()) + [None] * 700, bad) for p in pair if p is not None]
    enq = pipeline.enqueue_files(files, redis_client, batch_size=100, settings=DEFAULTS)
    ds = pipeline.enqueue_dataset("mixed", "smollm2-135m-instruct", redis_client, settings=DEFAULTS, depends_on=enq.label_jobs)
    # Two worker processes under one supervisor (`tinygpt worker --count 2`).
    assert wait_exit(worker(redis_url, home, "--count", "2")) == 0
    assert not stages.get_queue(redis_client, "data").failed_job_registry.get_job_ids()
    assert redis_client.zcard(keys.quarantine()) == 1000
    for path, sha in bad.items():
        rec = msgspec.msgpack.decode(redis_client.hget(keys.files(), sha), type=FileRecord)
        assert rec.status == "quarantined" and rec.reason.startswith(path.name + ": ") and len(rec.reason) > len(path.name) + 4
    result = stages.fetch_job(redis_client, ds.id).return_value()
    assert {r.trajectory_id for r in dataset_rows(result)} == set(corpus) and result.trajectories == 300


def count_once(n: int) -> int:
    """A job that records every run of itself (and where it ran)."""
    from rq import get_current_job

    conn = get_current_job().connection
    conn.incr(f"runs:{n}")
    conn.sadd("ran-in", os.getpid())
    time.sleep(0.01)
    return n


def test_two_workers_joined_through_redis_url_run_each_job_exactly_once(home, tmp_path):
    # A TCP listener, as a Redis on another host would be reached.
    with EmbeddedRedis(tmp_path / "redis", port=0) as server:
        url = server.tcp_url
        conn = redis.Redis.from_url(url)
        q = stages.get_queue(conn, "data")
        for n in range(200):
            q.enqueue_call(f"{__name__}.count_once", args=(n,))
        # Not a stage: the workers run it only because their command line allows it.
        workers = [worker(url, home, "--allow-job", f"{__name__}.count_once") for _ in range(2)]
        assert [wait_exit(w) for w in workers] == [0, 0]
        runs = conn.mget([f"runs:{n}" for n in range(200)])
        assert runs == [b"1"] * 200
        assert {int(p) for p in conn.smembers("ran-in")} == {w.pid for w in workers}  # both took a share
        conn.close()


def held(lock: Path) -> bool:
    if not lock.exists():
        return False
    with open(lock, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_only_one_worker_per_machine_serves_train(home, redis_url):
    env = {**os.environ, "REDIS_URL": redis_url, "TINYGPT_HOME": str(home)}
    holder = subprocess.Popen(child_command(["--queues", "train", *FAST]), env=env, cwd=REPO)
    try:
        while not held(home / "locks" / "queue-train.lock"):
            assert holder.poll() is None
            time.sleep(0.05)
        second = subprocess.run(child_command(["--queues", "train,data", "--burst"]), env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "already serves the 'train' queue" in second.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        wait_exit(holder)
