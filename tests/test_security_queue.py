"""Attacks on the queue through Redis, against a real redis-server and real workers.

Anyone who can write to Redis could enqueue a job naming any importable function (the
issue's reproduction: `subprocess.check_output(["id", "-un"])` returned `b'root\\n'`).
Workers must refuse it before importing anything and record why.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from rq import Callback
from rq.job import JobStatus

from tinygpt.queue import stages
from tinygpt.queue.worker import PipelineWorker, child_command

REPO = Path(__file__).resolve().parents[1]


def failure_reason(job) -> str:
    job.refresh()
    result = job.latest_result()
    return result.exc_string if result is not None else ""


def test_a_worker_process_refuses_a_job_calling_subprocess(redis_client, redis_url, tmp_path):
    """The issue's attack, end to end: a `tinygpt worker` process, a job written straight into Redis."""
    proof = tmp_path / "pwned"
    mark = tmp_path / "imported"
    q = stages.get_queue(redis_client, "data")
    attack = q.enqueue_call("subprocess.check_output", args=(["touch", str(proof)],), job_id="attack")
    # Importing the named module would already run code: the worker must not even do that.
    sneaky = q.enqueue_call("tests.security_jobs.echo", args=("hi",), job_id="sneaky")
    env = {**os.environ, "REDIS_URL": redis_url, "TINYGPT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO),
           "TINYGPT_TEST_IMPORT_MARK": str(mark)}
    done = subprocess.run(child_command(["--queues", "data", "--burst", "--log-level", "WARNING"]), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not proof.exists() and not mark.exists()
    for job, name in ((attack, "subprocess.check_output"), (sneaky, "tests.security_jobs.echo")):
        assert job.get_status(refresh=True) == JobStatus.FAILED
        reason = failure_reason(job)
        assert f"function '{name}' is not a pipeline stage entry point" in reason and "tinygpt.workers.jobs.ingest" in reason
    assert "is not a pipeline stage entry point" in done.stderr  # and the worker said so in its log
    assert q.failed_job_registry.get_job_ids() and not q.finished_job_registry.get_job_ids()


def drain(conn, **kw) -> None:
    PipelineWorker([stages.get_queue(conn, "data")], connection=conn, heartbeat_s=0.5, drain=True,
                   maintenance_interval=1, **kw).work(burst=True, logging_level="ERROR")


def test_callbacks_and_methods_are_refused_and_never_imported(redis_client, tmp_path, monkeypatch):
    mark = tmp_path / "imported"
    monkeypatch.setenv("TINYGPT_TEST_IMPORT_MARK", str(mark))
    sys.modules.pop("tests.security_jobs", None)
    q = stages.get_queue(redis_client, "data")
    # A real stage name, but with a callback RQ would import and call.
    hooked = q.enqueue_call(stages.STAGES["ingest"].func, args=("x",), job_id="hooked",
                            on_failure=Callback("tests.security_jobs.callback"))
    method = q.enqueue_call("upper", args=(), job_id="method")
    method.func_name = stages.STAGES["ingest"].func
    method._instance = "a string"  # a method call on a decoded value
    method.save()
    drain(redis_client)
    assert not mark.exists() and "tests.security_jobs" not in sys.modules
    assert "carries RQ callbacks" in failure_reason(hooked) and "tests.security_jobs.callback" in failure_reason(hooked)
    assert "method call on a str instance" in failure_reason(method)
    # Refused jobs are not retried, whatever retries they asked for.
    assert hooked.get_status(refresh=True) == JobStatus.FAILED and not q.scheduled_job_registry.get_job_ids()


def test_the_allowlist_follows_the_stage_graph_and_its_aliases(redis_client, monkeypatch):
    """A stage added to STAGES is allowed with no second list; a moved one keeps its old name working."""
    new = stages.Stage("echo", "tests.security_jobs.echo", "data", timeout_s=60, retries=1, backoff_s=(1,),
                       aliases=("tinygpt.queue.tasks.echo_before_it_moved",))
    monkeypatch.setitem(stages.STAGES, "echo", new)
    assert stages.entry_points()["tinygpt.queue.tasks.echo_before_it_moved"] == "tests.security_jobs.echo"
    q = stages.get_queue(redis_client, "data")
    current = stages.enqueue(redis_client, "echo", "now", job_id="current")
    old = q.enqueue_call("tinygpt.queue.tasks.echo_before_it_moved", args=("before",), job_id="old")
    drain(redis_client)
    assert current.get_status(refresh=True) == JobStatus.FINISHED and current.return_value() == "now"
    assert old.get_status(refresh=True) == JobStatus.FINISHED and old.return_value() == "before"
    monkeypatch.delitem(stages.STAGES, "echo")
    again = stages.get_queue(redis_client, "data").enqueue_call("tests.security_jobs.echo", args=("x",), job_id="again")
    drain(redis_client)
    assert again.get_status(refresh=True) == JobStatus.FAILED
    # The operator can allow more on the worker's own command line (never through Redis).
    allowed = q.enqueue_call("tests.security_jobs.echo", args=("ok",), job_id="allowed")
    drain(redis_client, allow_jobs=("tests.security_jobs.echo",))
    assert allowed.get_status(refresh=True) == JobStatus.FINISHED


def test_every_stage_entry_point_is_allowed():
    funcs = {s.func for s in stages.STAGES.values()}
    assert funcs <= set(stages.entry_points()) and all(f.startswith("tinygpt.") for f in funcs)


def test_a_job_enqueued_under_its_old_entry_point_still_runs(redis_client, tmp_path, monkeypatch):
    """Jobs in Redis from before the entry points moved to `tinygpt.workers.jobs` run where they live now."""
    from tests.fixtures.trajectories import helpers
    from tinygpt.runtime.contracts.jobs import IngestJob

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    assert "tinygpt.queue.tasks.ingest" in stages.STAGES["ingest"].aliases
    q = stages.get_queue(redis_client, "data")
    old = q.enqueue_call("tinygpt.queue.tasks.ingest", args=(IngestJob(batch=helpers.store(helpers.GOOD)),), job_id="old-ingest")
    drain(redis_client)
    assert old.get_status(refresh=True) == JobStatus.FINISHED, failure_reason(old)
    assert old.return_value().ingested == len(helpers.GOOD)
    # The old module is gone: the job can only have run as the current entry point.
    assert importlib.util.find_spec("tinygpt.queue.tasks") is None
    assert stages.STAGES["ingest"].func == "tinygpt.workers.jobs.ingest"
