"""`tinygpt up` survives its own parts, tried the way an operator meets the faults.

Real processes throughout: `tinygpt up` on the tiny model, its spawned workers, a real
redis-server. Each test keeps chat requests flowing while a part is killed and asserts
none of them failed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import msgspec
import openai
import pytest
import redis

from tests.daemon_support import Chatter, Up, pid_state
from tests.finetune_fixtures import import_task
from tests.test_queue_builds import project
from tests.test_queue_reliability import clean_corpus
from tinygpt.queue import builds, keys, progress, stages
from tinygpt.queue.embedded import EmbeddedRedis, ServerState

pytestmark = pytest.mark.slow


def wait_until(check, what: str, timeout: float = 300, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


def status(home, cwd, env=None) -> str:
    full = {**os.environ, "TINYGPT_HOME": str(home), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "tinygpt.runtime.cli", "status"], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_a_worker_sigkilled_mid_build_is_restarted_the_build_finishes_and_chat_never_fails(tmp_path, tiny_model_dir, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))  # the build's files go under up's home
    data = import_task(tiny_model_dir, tmp_path / "data", n=32, tools=True)
    pins = project(tmp_path, tiny_model_dir)
    up = Up(home, tmp_path)
    try:
        worker_pid = int(up.wait(r"Workers: 1 process\(es\) .*\(pid (\d+)\)").group(1))
        url = up.wait(r"Runtime: (http://\S+/v1)").group(1)
        conn = redis.Redis.from_url(up.wait(r"Redis: embedded redis-server at (\S+)").group(1))
        # The retry waits a second, not the stage's minute: the interval travels in the job.
        finetune = dataclasses.replace(stages.STAGES["finetune"], backoff_s=(1,))
        monkeypatch.setitem(stages.STAGES, "finetune", finetune)
        build = builds.enqueue_build(conn, specialist="calls", base_model=str(tiny_model_dir), dataset_dir=data,
                                     project_file=pins, registry=tmp_path / "registry",
                                     hyperparameters={"steps": 16, "batch_size": 4, "eval_every": 8})
        job_id = build.jobs["finetune"]
        with Chatter(url) as chat:
            # Kill it the way the OOM killer does, once training is under way.
            wait_until(lambda: (p := progress.read(conn, [job_id]).get(job_id)) and p.done >= 2, "training steps")
            killed_name = stages.fetch_job(conn, job_id).worker_name
            os.kill(worker_pid, signal.SIGKILL)
            up.wait(rf"Workers: worker 0 \(killed by SIGKILL after \d+s\); its job {job_id} goes back to the queue")
            new_pid = int(up.wait(r"Workers: worker 0 restarted \(pid (\d+), restart 1\)").group(1))
            assert new_pid != worker_pid and pid_state(worker_pid) is None  # reaped, no zombie

            def publish_done():
                state = stages.fetch_job(conn, build.jobs["publish"]).get_status()
                assert state not in ("failed", "canceled", "stopped"), (state, up.text)
                return state == "finished"

            wait_until(publish_done, "the build to finish after the kill", timeout=600)
            assert chat.ok > 0
        assert chat.failures == []  # the runtime served throughout
        job = stages.fetch_job(conn, job_id)
        assert job.retries_left == 0 and job.worker_name != killed_name  # retried, by the new worker
        assert (tmp_path / "registry" / "calls" / "1" / "lock.json").exists()
        shown = status(home, tmp_path)
        assert re.search(r"worker 0 \(data,train,eval\): running pid \d+, 1 restart\(s\), last killed by SIGKILL", shown), shown
    finally:
        assert up.stop() == 0, up.text
    assert "shutting down" not in up.text  # nothing above took the daemon down


def test_a_sigkilled_embedded_redis_is_reaped_restarted_on_its_aof_and_jobs_flow_again(tmp_path, tiny_model_dir, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    up = Up(home, tmp_path, "--model", str(tiny_model_dir))
    try:
        redis_url = up.wait(r"Redis: embedded redis-server at (\S+)").group(1)
        url = up.wait(r"Runtime: (http://\S+/v1)").group(1)
        conn = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
        conn.set("before-the-kill", "kept")  # acknowledged, so in the AOF within a second
        time.sleep(1.5)
        old = msgspec.json.decode((home / "redis" / "server.json").read_bytes(), type=ServerState)
        with Chatter(url) as chat:
            mark = len(up.lines)
            os.kill(old.pid, signal.SIGKILL)
            up.wait(rf"Redis: the embedded redis-server \(pid {old.pid}\) killed by SIGKILL; restarting it on its AOF", after=mark)
            new_pid = int(up.wait(r"Redis: embedded redis-server restarted \(pid (\d+)", after=mark).group(1))
            assert new_pid != old.pid and pid_state(old.pid) is None  # reaped: no zombie left
            assert conn.get("before-the-kill") == b"kept"  # same URL, data back from the AOF
            # Jobs flow again: trajectories enqueued now are ingested by the worker, which reconnected.
            files = list(clean_corpus(tmp_path, 5, seed=41).values())
            done = subprocess.run([sys.executable, "-m", "tinygpt.runtime.cli", "ingest", *map(str, files)], cwd=tmp_path,
                                  env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            wait_until(lambda: conn.hlen(keys.labels("default")) == 5, "the 5 trajectories to be labelled", timeout=120)
        assert chat.ok > 0 and chat.failures == []
        assert "restarted 1 time(s) by the daemon" in status(home, tmp_path)
    finally:
        assert up.stop() == 0, up.text
    assert "Traceback" not in up.text


def test_sigterm_with_redis_down_exits_cleanly_and_the_sealed_file_is_enqueued_on_the_next_start(tmp_path, tiny_model_dir, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    secret = "s3cret-pw"
    # An external Redis (REDIS_URL, over TCP, with a password), which `up` cannot restart.
    server = EmbeddedRedis(tmp_path / "external-redis", port=0).start()
    port = server.tcp_url.rsplit(":", 1)[1].split("/")[0]
    external = f"redis://:{secret}@127.0.0.1:{port}/0"
    try:
        with server.client() as admin:
            admin.config_set("requirepass", secret)
        env = {"REDIS_URL": external}
        up = Up(home, tmp_path, "--model", str(tiny_model_dir), env=env)
        try:
            up.wait(r"Redis: redis://:\*\*\*@127\.0\.0\.1:\d+/0 \(from REDIS_URL\)")
            worker_pid = int(up.wait(r"Workers: .*\(pid (\d+)\)").group(1))
            url = up.wait(r"Runtime: (http://\S+/v1)").group(1)
            with open(f"/proc/{worker_pid}/cmdline", "rb") as f:
                assert secret.encode() not in f.read()  # `ps` shows no password
            with Chatter(url) as chat:
                wait_until(lambda: chat.ok >= 2, "two answers")
                mark = len(up.lines)
                with redis.Redis.from_url(external) as admin:
                    admin.shutdown()  # the outage (with the password: stop() alone waits out its timeout)
                server.stop()
                up.wait(r"Redis: Redis at redis://:\*\*\*@127\.0\.0\.1:\d+/0 is unreachable", after=mark)
                shown = status(home, tmp_path, env)
                assert "Redis OUTAGE" in shown and secret not in shown, shown
                time.sleep(1)
            assert chat.failures == [] and chat.ok > 2  # serving went on during the outage
        finally:
            stopped = time.monotonic()
            assert up.stop() == 0, up.text
        # Stopping sealed the chat's trajectory while Redis was down: it waits on disk.
        assert time.monotonic() - stopped < 60, up.text  # prompt, not a hang on a dead Redis
        assert "Traceback" not in up.text and secret not in up.text, up.text
        assert up.text.count("wait on disk (first: ") == 1  # one line, not one per file
        sealed = list((home / "trajectories").glob("*.msgpack"))
        assert len(sealed) == chat.ok  # one conversation each
        for log in (home / "redis").glob("*.log"):
            assert secret not in log.read_text()

        # Redis is back (with its password); the next start puts the sealed file on the pipeline.
        server = EmbeddedRedis(tmp_path / "external-redis", port=int(port)).start()
        with server.client() as admin:
            admin.config_set("requirepass", secret)
        up = Up(home, tmp_path, "--model", str(tiny_model_dir), env=env)
        try:
            n = len(sealed)
            up.wait(rf"Pipeline: {n} sealed trajectory file\(s\): 0 recorded, 0 pending, {n} put back on the pipeline")
            with redis.Redis.from_url(external) as conn:
                wait_until(lambda: conn.hlen(keys.files()) == n, "the sealed files to be ingested", timeout=120)
            # Serving (start() has returned), so SIGTERM takes the running daemon's path.
            with Chatter(up.wait(r"Runtime: (http://\S+/v1)").group(1)) as chat:
                wait_until(lambda: chat.ok >= 1, "an answer")
        finally:
            code = up.stop()
        assert code == 0 and secret not in up.text, up.text
    finally:
        with redis.Redis.from_url(external) as admin:
            try:
                admin.shutdown()
            except redis.ConnectionError:
                pass  # already down
        server.stop()


def test_on_a_terminal_worker_logs_go_to_a_file_shown_on_the_live_screen(tmp_path, tiny_model_dir):
    import pty
    import select

    home = tmp_path / "home"
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "tinygpt.runtime.cli", "up", "--port", "0", "--refresh", "0.5",
                             "--model", str(tiny_model_dir)], cwd=tmp_path, env={**env, "TINYGPT_HOME": str(home), "COLUMNS": "200"},
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    screen = b""
    log = home / "logs" / "workers.log"

    def read_for(seconds: float) -> None:
        nonlocal screen
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    return

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (b"workers.log" in screen and log.exists() and "Listening on" in log.read_text()):
            read_for(0.5)
            assert proc.poll() is None, screen.decode(errors="replace")
        read_for(2)  # a few refreshes of the live screen
    finally:
        proc.terminate()
        while proc.poll() is None:
            read_for(0.5)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert proc.returncode == 0, text
    assert f"logs in {home / 'logs'}" in text and "workers.log" in text, text
    assert "Listening on" in log.read_text() and "Listening on" not in text  # nothing scrolls over the screen


def test_a_sigkilled_up_takes_its_workers_and_redis_with_it_and_the_next_up_starts(tmp_path, tiny_model_dir):
    """The OOM killer's pick may be `up` itself: nothing it started may live on holding the
    train lock (the next `up`'s worker could never start) or the home's Redis."""
    import psutil

    home = tmp_path / "home"
    up = Up(home, tmp_path, "--model", str(tiny_model_dir))
    up.wait(r"Runtime: (http://\S+/v1)")
    up.wait(r"Listening on")
    children = psutil.Process(up.proc.pid).children(recursive=True)
    assert any("tinygpt.queue.worker" in " ".join(p.cmdline()) for p in children)
    up.proc.kill()
    up.proc.wait()

    def all_gone():
        return not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_until(all_gone, "the dead up's worker and Redis to exit", timeout=120)
    again = Up(home, tmp_path, "--model", str(tiny_model_dir))
    try:
        url = again.wait(r"Runtime: (http://\S+/v1)").group(1)
        again.wait(r"Listening on")
        assert "another worker on this machine already serves" not in again.text
        client = openai.OpenAI(base_url=url, api_key="unused")
        assert client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices
    finally:
        assert again.stop() == 0, again.text
