"""A `tinygpt demo` stopped by SIGTERM (a service manager, `timeout`, a CI runner) stops the
`tinygpt up` it started, which runs in its own process group and would otherwise live on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil


def test_sigterm_stops_the_daemon_the_demo_started(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"TINYGPT_HOME": str(tmp_path / "home")}
    demo = subprocess.Popen([sys.executable, "-m", "tinygpt.runtime.cli", "demo", "--model", str(tiny_model_dir),
                             "--work", str(tmp_path / "work"), "--tasks", "2", "--attempts", "1", "--test-tasks", "2",
                             "--gate-tasks", "1", "--iters", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in demo.stdout:  # up is serving once the demo starts its held-out episodes
            seen.append(line)
            if line.startswith("before:"):
                break
        assert demo.poll() is None, "".join(seen)
        daemon = [p for p in psutil.Process(demo.pid).children(recursive=True)]
        assert any("up" in p.cmdline() for p in daemon), [p.cmdline() for p in daemon]
        demo.send_signal(signal.SIGTERM)
        rest = demo.communicate(timeout=300)[0]
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    # up, its Redis and its worker are gone (up stops the ones under it).
    deadline = time.monotonic() + 60
    while (alive := [p for p in daemon if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, [p.cmdline() for p in alive]


def test_waiting_for_a_build_outlasts_a_daemon_that_answers_late(monkeypatch):
    """A machine busy training may leave a poll unanswered for a minute: the demo polls again
    instead of giving up the run, and gives up only after MAX_STALLS silent polls in a row."""
    import urllib.error

    import pytest

    from tinygpt.runtime.demo import daemon
    from tinygpt.runtime.demo.errors import DemoError

    answers = iter([TimeoutError("timed out"), urllib.error.URLError(TimeoutError("timed out")), "", "2"])

    def served(root_url, name, key):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(daemon, "served_version", served)
    monkeypatch.setattr(daemon, "POLL_S", 0.0)
    monkeypatch.setattr(daemon, "refused_build", lambda *a: None)
    version, _ = daemon.wait_for_version("http://x", "fileops", "1", key=None, project=None, since=0.0, up=None, after_line=0)
    assert version == "2"

    def silent(root_url, name, key):
        raise TimeoutError("timed out")

    monkeypatch.setattr(daemon, "served_version", silent)
    with pytest.raises(DemoError, match=f"did not answer {daemon.MAX_STALLS} polls in a row"):
        daemon.wait_for_version("http://x", "fileops", "1", key=None, project=None, since=0.0, up=None, after_line=0)

    def refused(root_url, name, key):
        raise urllib.error.URLError(ConnectionRefusedError(111, "refused"))

    monkeypatch.setattr(daemon, "served_version", refused)  # the daemon is gone: no waiting on it
    with pytest.raises(urllib.error.URLError):
        daemon.wait_for_version("http://x", "fileops", "1", key=None, project=None, since=0.0, up=None, after_line=0)
