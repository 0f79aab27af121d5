"""Reconcile: sealed trajectory files Redis has no record of go back on the pipeline, once.

Against a real redis-server and real worker processes: after a FLUSHALL the 50 sealed
files of a runtime's trajectory directory are found again by `tinygpt ingest
--reconcile`, each reaches the label stage exactly once, and reconciling again (jobs
still queued, or all done) adds nothing.
"""

from __future__ import annotations

import pytest

from tests.test_queue_reliability import clean_corpus, wait_exit, worker
from tinygpt.queue import keys, pipeline, reconcile, stages
from tinygpt.runtime import cli
from tinygpt.queue import store

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no project file: default pipeline settings
    return home


def sealed(home, tmp_path, n):
    """`n` sealed trajectory files where the runtime puts them (<home>/trajectories)."""
    root = home / "trajectories"
    root.mkdir(parents=True)
    for traj_id, src in clean_corpus(tmp_path, n, seed=31).items():
        (root / f"{traj_id}.msgpack").write_bytes(src.read_bytes())
    (root / "open").mkdir()  # open files are the recorder's, not reconcile's
    (root / "open" / "traj_still_open.msgpack").write_bytes(b"not sealed yet")
    return root


def label_counts(conn, job_ids):
    """Sum of the label jobs' own counts: how many times a file was labelled."""
    total = 0
    for job_id in job_ids:
        job = stages.fetch_job(conn, job_id)
        assert job.get_status() == "finished", job_id
        total += job.return_value().labelled
    return total


def label_job_ids(conn):
    return [k.decode()[len("rq:job:"):] for k in conn.scan_iter("rq:job:label-*") if k.count(b":") == 2]


def test_flushall_then_reconcile_brings_all_50_back_exactly_once(home, tmp_path, redis_client, redis_url, capsys):
    root = sealed(home, tmp_path, 50)
    # The runtime's hook enqueued each file as it was sealed; a worker labelled them all.
    for f in reconcile.sealed_files(root):
        pipeline.enqueue_trajectory(f, redis_client)
    assert wait_exit(worker(redis_url, home)) == 0
    assert redis_client.hlen(keys.labels("default")) == 50
    assert redis_client.hlen(keys.pending()) == 0  # ingest cleared every mark

    assert cli.main(["ingest", "--reconcile"]) == 0  # nothing forgotten: nothing to do
    assert "50 recorded, 0 pending, 0 put back" in capsys.readouterr().out

    redis_client.flushall()  # a wipe: Redis remembers nothing, the files are still there
    assert cli.main(["ingest", "--reconcile"]) == 0
    assert "50 sealed trajectory file(s): 0 recorded, 0 pending, 50 put back on the pipeline" in capsys.readouterr().out
    # Again before any worker ran: every file has a live ingest job, nothing is added.
    jobs_before = sorted(redis_client.scan_iter("rq:job:*"))
    assert cli.main(["ingest", "--reconcile"]) == 0
    assert "0 recorded, 50 pending, 0 put back" in capsys.readouterr().out
    assert sorted(redis_client.scan_iter("rq:job:*")) == jobs_before

    assert wait_exit(worker(redis_url, home)) == 0
    assert redis_client.hlen(keys.labels("default")) == 50
    assert label_counts(redis_client, label_job_ids(redis_client)) == 50  # each one labelled once
    assert redis_client.hlen(keys.pending()) == 0
    done = reconcile.reconcile([root], redis_client)
    assert (done.scanned, done.known, done.pending, done.enqueued.files) == (50, 50, 0, 0)


def test_a_pending_mark_whose_job_is_gone_counts_as_unknown(home, tmp_path, redis_client, redis_url):
    root = sealed(home, tmp_path, 3)
    files = reconcile.sealed_files(root)
    out = pipeline.enqueue_files(files, redis_client, batch_size=3)
    (ingest_id,) = out.ingest_jobs
    assert reconcile.reconcile([root], redis_client).pending == 3
    # The job is lost (e.g. the AOF's last second) but its marks survived.
    stages.fetch_job(redis_client, ingest_id).delete()
    again = reconcile.reconcile([root], redis_client)
    assert (again.pending, again.enqueued.files) == (0, 3)
    mark = redis_client.hget(keys.pending(), store.sha256_bytes(files[0].read_bytes()))
    assert mark.decode() in again.enqueued.ingest_jobs  # the mark now names the new job


def test_ingest_wait_reports_redis_going_away_instead_of_calling_it_finished(home, tmp_path):
    import os
    import subprocess
    import sys

    from tinygpt.queue.embedded import EmbeddedRedis

    files = list(clean_corpus(tmp_path, 2, seed=32).values())
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        env = {**os.environ, "REDIS_URL": server.url, "TINYGPT_HOME": str(home)}
        # No worker runs: `--wait` polls the jobs until Redis goes away under it.
        proc = subprocess.Popen([sys.executable, "-m", "tinygpt.runtime.cli", "ingest", "--wait", *map(str, files)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "enqueued 2 trajectory file(s)" in proc.stdout.readline()
    finally:
        server.stop()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "error: Redis failed (ConnectionError" in err and "Traceback" not in err
    assert "finished" not in out  # the jobs never ran: nothing may claim they did
