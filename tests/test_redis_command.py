"""`tinygpt redis`: a foreground server that stops cleanly, refuses a duplicate, stops one."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

from tinygpt.queue.embedded import EmbeddedRedis, find_running
from tinygpt.runtime import cli

WAIT = 60.0  # generous: a small shared machine


def read_until(proc: subprocess.Popen, marker: bytes, timeout: float = WAIT) -> bytes:
    """What `proc` wrote to stdout up to `marker` (a bounded wait, failing if it exits)."""
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} from tinygpt redis in time; got {seen!r}"
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"tinygpt redis exited early: {seen!r} {proc.stderr.read()!r}"
                seen += chunk
    return seen


def test_tinygpt_redis_runs_in_the_foreground_and_stops_on_sigterm(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"TINYGPT_HOME": str(home)}
    # cwd outside the repo: `python -m` puts cwd on sys.path, and `queue/` would shadow the stdlib.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinygpt.runtime.cli", "redis"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        banner = read_until(proc, b"Ctrl-C to stop").decode()
        server = find_running(home / "redis")
        assert server is not None, banner
        assert server.url in banner and "AOF" in banner
        with server.client() as c:
            assert c.ping()
            c.set("survives", "the restart")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"AOF flushed" in out
    assert server.aof_path.exists()
    assert not server.pidfile.exists()
    assert not os.path.exists(f"/proc/{server.pid}")
    with EmbeddedRedis(home / "redis") as again, again.client() as c:
        assert c.get("survives") == b"the restart"


def test_tinygpt_redis_refuses_a_second_server_and_stops_a_background_one(tmp_path, capsys):
    background = EmbeddedRedis(tmp_path).start(detach=True)
    try:
        # A subprocess with a timeout: were the running server missed, this would serve forever.
        second = subprocess.run(
            [sys.executable, "-m", "tinygpt.runtime.cli", "redis", "--data-dir", str(tmp_path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert second.returncode == 1, second.stdout
        assert f"already runs for {tmp_path}" in second.stderr
        assert find_running(tmp_path).pid == background.pid  # left alone

        assert cli.main(["redis", "--data-dir", str(tmp_path), "--stop"]) == 0
        assert f"stopped redis-server pid {background.pid}" in capsys.readouterr().out
        assert find_running(tmp_path) is None
        assert background.wait() == 0  # SHUTDOWN: a clean exit

        assert cli.main(["redis", "--data-dir", str(tmp_path), "--stop"]) == 0
        assert "no embedded redis-server is running" in capsys.readouterr().out
    finally:
        if find_running(tmp_path) is not None:
            background.stop()
