"""Driving a real `tinygpt up` in tests: its output read on a thread, chat kept flowing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import openai
import pytest


class Up:
    """A `tinygpt up --plain` process whose output lines are collected as they come.

    A reader thread drains the pipe (a full pipe would block the daemon itself); `wait`
    looks for a line matching a pattern, failing the test (with the whole output) when
    it never comes.
    """

    def __init__(self, home, cwd, *args, env: dict | None = None):
        full = {**os.environ, "TINYGPT_HOME": str(home), **(env or {})}
        if env is None or "REDIS_URL" not in env:
            full.pop("REDIS_URL", None)  # the embedded server is what `up` starts by default
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinygpt.runtime.cli", "up", "--plain", "--port", "0", "--refresh", "0.5", *args],
            cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait(self, pattern: str, *, after: int = 0, timeout: float = 300) -> re.Match:
        """The first line (from line number `after`) that matches `pattern`."""
        deadline = time.monotonic() + timeout
        seen = after
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if m := re.search(pattern, line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._changed.wait(min(left, 1.0))
        pytest.fail(f"never saw {pattern!r}:\n{self.text}")

    def stop(self, timeout: float = 180) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"`tinygpt up` did not stop within {timeout}s of SIGTERM:\n{self.text}")
        self._reader.join(timeout=10)
        return code


class Chatter:
    """Sends a chat request after another until stopped; counts successes, keeps failures."""

    def __init__(self, url: str, pause: float = 0.3):
        self.client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        self.pause = pause
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Chatter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                reply = self.client.chat.completions.create(
                    model="base", messages=[{"role": "user", "content": f"hello {n}"}], max_tokens=3, temperature=0
                )
                assert reply.choices[0].finish_reason in ("stop", "length")
                self.ok += 1
            except Exception as e:  # every kind of failure is what this counts
                self.failures.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.pause)


def pid_state(pid: int) -> str | None:
    """The process state letter from /proc (Z: zombie), or None when no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
