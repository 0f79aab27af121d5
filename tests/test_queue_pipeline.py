"""The stage graph on a real Redis with an in-process worker: chaining, idempotent
enqueueing, retries with backoff, the dead-letter queue, timeouts, `tinygpt jobs`."""

from __future__ import annotations

import argparse
import time

import msgspec
import pytest
from rq import Retry
from rq.job import JobStatus

from tests.fixtures.trajectories import helpers
from tinygpt.queue import failed, keys, pipeline, stages
from tinygpt.queue.errors import PermanentError
from tinygpt.queue.worker import PipelineWorker
from tinygpt.runtime.contracts import read_any
from tinygpt.runtime.contracts.pipeline import FileRecord, PipelineSettings
from tinygpt.runtime.contracts.trajectory import Feedback, Trajectory


DEFAULTS = PipelineSettings()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables on one line each


def drain(conn, queues=("data",)) -> None:
    """Run one in-process worker until nothing is left (backoff retries included)."""
    worker = PipelineWorker([stages.get_queue(conn, q) for q in queues], connection=conn, heartbeat_s=0.5, drain=True,
                            maintenance_interval=1, allow_jobs=(f"{__name__}.flaky", f"{__name__}.sleepy"))
    worker.work(burst=True, logging_level="WARNING")


# Job functions for the queue tests (workers import them by name).
def flaky(key: str, failures: int) -> int:
    from rq import get_current_job

    conn = get_current_job().connection
    n = conn.incr(key)
    conn.rpush(key + ":at", time.time())
    if n <= failures:
        raise RuntimeError(f"transient failure {n}")
    return n


def sleepy(seconds: float) -> None:
    time.sleep(seconds)


def test_enqueue_trajectory_chains_the_stages_and_is_idempotent(redis_client):
    path = helpers.HERE / "weather_tool.msgpack"
    ids = pipeline.enqueue_trajectory(path, redis_client, settings=DEFAULTS)
    assert [i.split("-")[0] for i in ids] == ["ingest", "dedupe", "label"]
    statuses = [stages.fetch_job(redis_client, i).get_status() for i in ids]
    assert statuses == [JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.DEFERRED]  # depends_on
    assert pipeline.enqueue_trajectory(path, redis_client, settings=DEFAULTS) == ids
    assert stages.get_queue(redis_client, "data").count == 1  # the same bytes: no new jobs
    drain(redis_client)
    assert all(stages.fetch_job(redis_client, i).get_status() == JobStatus.FINISHED for i in ids)
    (rec,) = [msgspec.msgpack.decode(v, type=FileRecord) for v in redis_client.hvals(keys.files())]
    assert rec.trajectory_id == "rec-weather-tool" and rec.origin == str(path)


def test_a_rewritten_file_flows_through_as_a_new_version(redis_client, tmp_path):
    # The runtime rewrites a sealed trajectory when feedback arrives and calls the hook again.
    traj = read_any(helpers.HERE / "tool_error.msgpack", Trajectory)
    path = tmp_path / "rec.msgpack"
    path.write_bytes(msgspec.msgpack.encode(traj))
    first = pipeline.enqueue_trajectory(path, redis_client, settings=DEFAULTS)
    drain(redis_client)
    path.write_bytes(msgspec.msgpack.encode(msgspec.structs.replace(traj, feedback=[Feedback(trajectory_id=traj.id, label="bad")])))
    second = pipeline.enqueue_trajectory(path, redis_client, settings=DEFAULTS)
    assert second != first
    drain(redis_client)
    # The version with the (negative) feedback superseded the first and was labelled.
    with pytest.raises(PermanentError, match="'label_drop': 1"):
        helpers.build(redis_client, "v")


def test_transient_failures_retry_with_backoff_then_succeed(redis_client):
    q = stages.get_queue(redis_client, "data")
    job = q.enqueue_call(f"{__name__}.flaky", args=("flaky:a", 2), retry=Retry(max=3, interval=[1, 2]))
    drain(redis_client)
    assert job.get_status(refresh=True) == JobStatus.FINISHED and job.return_value() == 3
    at = [float(x) for x in redis_client.lrange("flaky:a:at", 0, -1)]
    # The scheduled registry counts whole seconds, so the 2 s wait may come out up to
    # ~1.5 s shorter on a loaded machine; an immediate retry takes milliseconds.
    assert at[1] > at[0] and at[2] - at[1] >= 0.4  # the backoff was waited out


def test_dead_letters_keep_the_reason_and_can_be_retried_or_dropped(redis_client):
    q = stages.get_queue(redis_client, "data")
    doomed = q.enqueue_call(f"{__name__}.flaky", args=("flaky:b", 2), retry=Retry(max=1, interval=[1]), job_id="doomed")
    waiting = q.enqueue_call(f"{__name__}.flaky", args=("flaky:c", 0), depends_on=[doomed.id], job_id="waiting")
    drain(redis_client)
    (letter,) = failed.dead_letters(redis_client)
    assert letter.job_id == "doomed" and letter.reason == "RuntimeError: transient failure 2"
    assert waiting.get_status(refresh=True) == JobStatus.DEFERRED
    assert failed.retry(redis_client, ["doomed"]) == ["doomed"]
    drain(redis_client)
    assert doomed.get_status(refresh=True) == JobStatus.FINISHED
    assert waiting.get_status(refresh=True) == JobStatus.FINISHED  # released by the retry

    q.enqueue_call(f"{__name__}.flaky", args=("flaky:d", 9), job_id="hopeless")
    q.enqueue_call(f"{__name__}.flaky", args=("flaky:e", 0), depends_on=["hopeless"], job_id="orphan")
    drain(redis_client)
    assert failed.drop(redis_client, None) == ["hopeless"]
    assert not failed.dead_letters(redis_client)
    assert not redis_client.exists("rq:job:orphan")  # its dependents went with it
    with pytest.raises(ValueError, match="not in the failed registry"):
        failed.retry(redis_client, ["nope"])


def test_permanent_errors_skip_the_retries(redis_client):
    job = pipeline.enqueue_dataset("Not A Valid Name", "m", redis_client, settings=DEFAULTS)
    drain(redis_client)
    (letter,) = failed.dead_letters(redis_client)
    assert letter.job_id == job.id and letter.stage == "dataset"
    assert letter.reason.startswith("PermanentError: dataset name 'Not A Valid Name'")
    assert stages.get_queue(redis_client, "data").scheduled_job_registry.count == 0


def test_a_stage_past_its_timeout_fails_with_the_reason(redis_client):
    q = stages.get_queue(redis_client, "data")
    q.enqueue_call(f"{__name__}.sleepy", args=(30,), timeout=1, job_id="slow")
    drain(redis_client)
    (letter,) = failed.dead_letters(redis_client)
    assert "JobTimeoutException" in letter.reason and "1 seconds" in letter.reason


def test_jobs_command_lists_retries_and_drops(redis_client, capsys):
    from tinygpt.runtime.commands import jobs

    def cmd(*argv):
        p = argparse.ArgumentParser()
        jobs.configure(p)
        return jobs.run(p.parse_args(list(argv)))

    q = stages.get_queue(redis_client, "data")
    q.enqueue_call(f"{__name__}.flaky", args=("flaky:f", 1), job_id="once")
    drain(redis_client)
    assert cmd("list") == 0 and "RuntimeError: transient failure 1" in capsys.readouterr().out
    assert cmd("retry") == 2  # needs ids or --all
    assert cmd("retry", "once") == 0 and "requeued 1 job(s): once" in capsys.readouterr().out
    drain(redis_client)
    assert cmd("list") == 0 and "no failed jobs" in capsys.readouterr().out


def test_unknown_queue_names_are_refused():
    with pytest.raises(ValueError, match="unknown queue 'dat'"):
        stages.queue_name("dat")
