"""Progress of long jobs through Redis: what `tinygpt up` and `tinygpt status` draw as bars."""

from __future__ import annotations

import io
import time

import redis
from rich.console import Console

from tinygpt.queue import keys, progress
from tinygpt.runtime.contracts.jobs import JobProgress
from tinygpt.runtime.progress_bar import job_progress


def test_reporter_throttles_but_always_writes_first_and_last(redis_client):
    tick = progress.JobReporter(redis_client, "j1", "finetune", label="calls: lora", unit="step", min_interval=60)
    tick(0, 10)
    assert progress.read(redis_client, ["j1"])["j1"].done == 0
    for step in range(1, 10):
        tick(step, 10, f"loss {1 / step:.2f}")
    assert progress.read(redis_client, ["j1"])["j1"].done == 0  # throttled: one write a minute here
    tick(10, 10, "loss 0.05")
    last = progress.read(redis_client, ["j1"])["j1"]
    assert (last.done, last.total, last.detail, last.label, last.unit) == (10, 10, "loss 0.05", "calls: lora", "step")
    assert 0 < redis_client.ttl(keys.progress("j1")) <= progress.TTL_SECONDS  # a dead worker's record goes away
    tick.clear()
    assert progress.read(redis_client, ["j1"]) == {}


def test_unreadable_records_and_unknown_jobs_are_skipped(redis_client):
    redis_client.set(keys.progress("bad"), b"{not json")
    progress.JobReporter(redis_client, "good", "evalgate")(1, 2)
    assert list(progress.read(redis_client, ["bad", "good", "missing"])) == ["good"]


def test_a_redis_outage_never_fails_the_job(caplog):
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    tick = progress.JobReporter(down, "j2", "finetune", min_interval=0)
    for step in range(3):
        tick(step, 3)  # no exception: progress is for people, the job's result is what matters
    tick.clear()
    assert sum("not recorded" in r.getMessage() for r in caplog.records) == 1  # said once, not per step


def test_outside_a_job_there_is_no_reporter():
    assert progress.for_current_job("finetune") is None
    with progress.reporting("finetune") as tick:
        assert tick is None


def test_a_local_bar_draws_on_a_terminal_and_is_silent_elsewhere():
    from tinygpt.runtime.progress_bar import progress_bar

    stream = io.StringIO()
    with progress_bar(Console(file=stream, width=120, force_terminal=True), "evaluating") as tick:
        for done in range(4):
            tick(done, 3)
    assert "evaluating" in stream.getvalue() and "3/3" in stream.getvalue()  # the final frame is drawn
    stream = io.StringIO()
    with progress_bar(Console(file=stream, width=120, force_terminal=False), "evaluating") as tick:
        tick(1, 3)
    assert stream.getvalue() == ""  # logs and CI keep their plain lines


def _text(renderable) -> str:
    console = Console(width=120, record=True)
    console.print(renderable)
    return console.export_text()


def test_the_bar_shows_count_eta_detail_and_staleness():
    now = time.time()
    moving = JobProgress(job_id="a", stage="finetune", done=6, total=24, unit="step", detail="loss 1.234",
                         started=now - 60, updated=now)
    text = _text(job_progress(moving))
    assert "6/24 step" in text and "ETA 3m00s" in text and "loss 1.234" in text
    stalled = JobProgress(job_id="b", stage="evalgate", done=3, total=12, unit="answer", started=now - 900, updated=now - 600)
    assert "no news for 10m" in _text(job_progress(stalled))
    assert _text(job_progress(None)).strip() == "-"
