"""One training job per machine: a second one waits for the first, a killed one frees the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tinygpt.workers.training.lock import LockBusy, training_lock

# Takes the lock (printing what it says while waiting), reports, and holds it until stdin has a line.
HOLDER = r"""
import sys
from tinygpt.workers.training.lock import training_lock
with training_lock(say=lambda m: print("say:", m, flush=True)):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "TINYGPT_HOME": str(tmp_path / "home")}


def _holder(env):
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER], env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def test_a_second_job_waits_for_the_first(env, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", env["TINYGPT_HOME"])
    first = _holder(env)
    assert first.stdout.readline() == "locked\n"
    with pytest.raises(LockBusy, match=f"pid {first.pid}"):
        with training_lock(wait=False):
            pass

    second = _holder(env)
    assert second.stdout.readline().startswith(f"say: waiting for the running training job (pid {first.pid})")
    first.stdin.write("\n")
    first.stdin.flush()
    assert first.stdout.readline() == "released\n"
    assert second.stdout.readline() == "locked\n"  # only now, after the first let go
    second.stdin.write("\n")
    second.stdin.flush()
    assert second.wait() == 0 and first.wait() == 0


def test_a_killed_job_releases_the_lock(env, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", env["TINYGPT_HOME"])
    holder = _holder(env)
    assert holder.stdout.readline() == "locked\n"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with training_lock(wait=False):
        pass
