"""The daemon's parts on their own: the redaction helper, the worker pool's restarts and
backoff with real worker processes, and its log file."""

from __future__ import annotations

import os
import time

import pytest

from tinygpt.runtime.redact import redact
from tinygpt.queue.supervisor import WorkerPool, describe_exit


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///tmp/x/redis.sock?db=0", "unix:///tmp/x/redis.sock?db=0"),
        ("redis://:s3cret@db:6379/0", "redis://:***@db:6379/0"),
        ("rediss://alice:s3cret@db.example:6380/1", "rediss://alice:***@db.example:6380/1"),
        # A password with an unencoded "@" runs to the last one, as urlsplit reads it.
        ("redis://:p@ss@db:6379", "redis://:***@db:6379"),
        ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("redis://db:6379/0?password=s3cret&db=1", "redis://db:6379/0?password=***&db=1"),
        # Inside a message or a command line: every URL in it.
        ("cannot reach redis://u:one@a:1/0 nor rediss://:two@b:2 (retrying)", "cannot reach redis://u:***@a:1/0 nor rediss://:***@b:2 (retrying)"),
        ("python -c ... --url redis://:s3cret@db:6379/0 --queues data", "python -c ... --url redis://:***@db:6379/0 --queues data"),
    ],
)
def test_redact_hides_every_password_and_nothing_else(shown, expected):
    assert redact(shown) == expected
    assert redact(expected) == expected  # idempotent


def test_describe_exit_names_the_signal():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exited with code 2"


def test_a_worker_that_keeps_dying_is_restarted_with_growing_backoff_and_logs_to_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    secret = "topsecret"
    # Nothing listens on port 1: every worker exits at once with "cannot reach Redis".
    env = {**os.environ, "REDIS_URL": f"redis://:{secret}@127.0.0.1:1/0"}
    said: list[str] = []
    log = tmp_path / "logs" / "workers.log"
    pool = WorkerPool(["data"], 1, env=env, log_path=log, say=said.append).start()
    try:
        deaths = [line for line in said if "exited" in line]
        deadline = time.monotonic() + 120
        while len(deaths) < 3 and time.monotonic() < deadline:
            pool.tick()
            deaths = [line for line in said if "exited" in line]
            time.sleep(0.05)
    finally:
        pool.stop(timeout=30)
    assert [d.rsplit("restarting in ", 1)[1] for d in deaths[:3]] == ["1s", "2s", "4s"], said
    assert all(d.startswith("Workers: worker 0 (exited with code 2 after ") for d in deaths)
    assert sum("restarted (pid" in line for line in said) >= 2
    text = log.read_text()
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in text and secret not in text


def test_the_screen_warns_about_the_reference_blas_and_says_how_to_get_the_fast_one(monkeypatch):
    from tinygpt.runtime import blas

    monkeypatch.setattr(blas, "_state", None)
    monkeypatch.setattr(blas, "candidates", lambda: [])
    monkeypatch.setattr(blas, "_global_provider", lambda: None)
    monkeypatch.setattr(blas.sys, "modules", {k: v for k, v in blas.sys.modules.items() if k != "mlx.core"})
    monkeypatch.setattr(blas.sys, "platform", "linux")
    monkeypatch.delenv(blas.ENV, raising=False)
    warning = blas.reference_blas_warning()
    assert "reference BLAS" in warning and "apt-get install libopenblas0-pthread" in warning and blas.ENV in warning
    monkeypatch.setattr(blas, "_state", None)
    monkeypatch.setenv(blas.ENV, "off")
    assert f"unset {blas.ENV}" in blas.reference_blas_warning()
    monkeypatch.setattr(blas, "_state", {"active": "/usr/lib/libopenblas.so.0", "source": "auto", "reason": ""})
    assert blas.reference_blas_warning() is None


def test_up_s_screen_shows_an_external_redis_outage_without_its_password(tmp_path, monkeypatch):
    import argparse

    from rich.console import Console

    from tinygpt.queue import health, overview
    from tinygpt.queue.daemon import Daemon
    from tinygpt.runtime.stack import Stack

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(overview, "collect", lambda limit=5: (_ for _ in ()).throw(ConnectionError("down")))
    said: list[str] = []
    url = "redis://:topsecret@127.0.0.1:1/0"  # nothing listens on port 1
    daemon = Daemon(url, trajectory_dirs=[tmp_path / "trajectories"], say=said.append)
    daemon.tick()
    stack = Stack(args=argparse.Namespace(), console=None, model="tiny", project_name="default", redis_url=url, daemon=daemon)
    console = Console(width=300, record=True)
    console.print(stack._screen())
    text = console.export_text()
    assert "redis://:***@127.0.0.1:1/0 UNREACHABLE since" in text and "topsecret" not in text, text
    assert len(said) == 1 and "is unreachable (ConnectionError" in said[0] and "topsecret" not in said[0]
    report = health.read()  # what `tinygpt status` shows, written on the change
    assert report is not None and not report.redis.reachable and report.redis.url == "redis://:***@127.0.0.1:1/0"
    daemon.stop()
    assert health.read() is None


def test_a_file_sealed_during_an_outage_is_enqueued_when_redis_is_back(tmp_path, monkeypatch):
    from tests.test_queue_reliability import clean_corpus
    from tinygpt.queue import keys
    from tinygpt.queue.daemon import Daemon
    from tinygpt.queue.embedded import EmbeddedRedis
    from tinygpt.queue import store

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    root = tmp_path / "home" / "trajectories"
    root.mkdir(parents=True)
    server = EmbeddedRedis(tmp_path / "redis").start()
    said: list[str] = []
    daemon = Daemon(server.url, trajectory_dirs=[root], say=said.append)
    try:
        daemon.guard.check_s = 0.0  # check on every tick
        daemon.start()
        server.stop()  # an outage (an external Redis: nobody here restarts it)
        daemon.tick()
        assert not daemon.guard.reachable
        (src,) = clean_corpus(tmp_path, 1, seed=51).values()
        sealed = root / src.name
        sealed.write_bytes(src.read_bytes())
        daemon.defer(sealed)  # what the runtime's hook reports when it cannot enqueue
        daemon.tick()
        server = EmbeddedRedis(tmp_path / "redis").start()  # back, same socket
        daemon.tick()
        assert daemon.guard.reachable and any("reachable again" in s for s in said), said
        with server.client() as conn:
            assert conn.hexists(keys.pending(), store.sha256_bytes(sealed.read_bytes()))
        assert daemon.reconciled == 1 and "1 put back on the pipeline" in said[-1], said
    finally:
        daemon.stop()
        server.stop()
