"""Worker processes that outlive their own deaths: started, watched and restarted.

A worker can die for reasons that say nothing about the daemon: the kernel's OOM killer
SIGKILLs a big training job, a bug crashes the interpreter, Redis vanishes while it
starts. `WorkerPool` keeps `count` worker processes alive: a dead one is restarted after
a short delay that doubles each time it dies young (so a worker that cannot start does
not spin) and resets once one lives long enough. The job a dead worker held is handed
back at once (`release_worker`): RQ retries it with the stage's own retry policy,
instead of waiting for its lease to run out.

Worker processes are spawned (never forked), get the Redis URL through the environment
only (a password on a command line is visible to every user in `ps`), and, when a log
file is given, write their logs there instead of over a live screen.

`tick()` does the watching; the owner calls it every fraction of a second from its main
loop (`tinygpt up`'s screen loop, `tinygpt worker --count N`'s wait loop).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from . import stages
from tinygpt.runtime.redact import redact

log = logging.getLogger("tinygpt.supervisor")

# Restart delays: the first restart comes fast; a worker that keeps dying waits longer
# each time, up to MAX_BACKOFF_S, until one run lasts STABLE_S.
MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_S = 60.0


def describe_exit(code: int) -> str:
    """`-9` -> "killed by SIGKILL", `2` -> "exited with code 2"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def exclusive_split(index: int, queues: list[str]) -> list[str]:
    """The queues of worker `index`: exclusive queues (train) go to the first worker only."""
    return queues if index == 0 else [q for q in queues if q not in stages.EXCLUSIVE]


@dataclass
class Slot:
    """One worker position in the pool and the process filling it now (if any)."""

    index: int
    queues: list[str]
    name: str = ""
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    # Deaths in a row of runs shorter than STABLE_S: what the backoff grows with.
    quick_deaths: int = 0
    restart_at: float | None = None
    last_exit: str = ""
    done: bool = False  # exited cleanly in burst mode: nothing left to do
    # What this position adds to the pool's environment (e.g. the GPU it is pinned to).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def state(self) -> str:
        if self.pid is not None:
            return "running"
        if self.done:
            return "done"
        if self.restart_at is not None:
            return f"restarting in {max(0.0, self.restart_at - time.monotonic()):.0f}s"
        return "stopped"


class WorkerPool:
    """`count` worker processes on `queues`, restarted when they die (see the module doc).

    `argv` is what every worker gets after its queues and name (heartbeat, burst, ...);
    `env` must carry REDIS_URL. `say` receives one line per event worth telling a person
    (a death, a restart). `burst`: a worker that exits 0 has drained its queues and is
    not restarted. `layout` replaces the default split of `queues` over `count` workers
    with explicit positions, (queues, extra environment) each: one per GPU, pinned
    (runtime/device_plan.py).
    """

    def __init__(
        self,
        queues: list[str],
        count: int,
        *,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        say: Callable[[str], None] = log.warning,
        burst: bool = False,
        min_backoff_s: float = MIN_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        stable_s: float = STABLE_S,
        layout: list[tuple[list[str], dict[str, str]]] | None = None,
    ):
        if count < 1:
            raise ValueError(f"worker count must be at least 1, got {count}")
        self.argv = list(argv or [])
        self.env = dict(env if env is not None else os.environ)
        self.log_path = log_path
        self.say = say
        self.burst = burst
        self.min_backoff_s, self.max_backoff_s, self.stable_s = min_backoff_s, max_backoff_s, stable_s
        if layout is not None:
            self.slots = [Slot(i, list(qs), env=dict(env)) for i, (qs, env) in enumerate(layout) if qs]
        else:
            self.slots = [Slot(i, qs) for i in range(count) if (qs := exclusive_split(i, queues))]
        self._tag = f"{socket.gethostname()}-{os.getpid()}"
        self._log_file = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WorkerPool:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # Appended by every worker; O_APPEND keeps whole lines from interleaving.
            self._log_file = open(self.log_path, "ab", buffering=0)
        for slot in self.slots:
            self._spawn(slot)
        return self

    def _spawn(self, slot: Slot) -> None:
        from .worker import PARENT_ENV, child_command

        # A fresh name per process: RQ refuses two live workers with one name, and the
        # name is how a dead worker's job is found again (release_worker).
        slot.name = f"{self._tag}-w{slot.index}-{uuid.uuid4().hex[:6]}"
        argv = ["--queues", ",".join(slot.queues), "--name", slot.name, *self.argv]
        out = self._log_file if self._log_file is not None else None
        env = {**self.env, **slot.env, PARENT_ENV: str(os.getpid())}  # the worker stops if this process dies
        slot.proc = subprocess.Popen(child_command(argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    @property
    def alive(self) -> int:
        return sum(1 for s in self.slots if s.pid is not None)

    @property
    def finished(self) -> bool:
        """Burst mode: every worker has exited cleanly (and none waits for a restart)."""
        return all(s.done for s in self.slots)

    def tick(self, connect: Callable[[], redis.Redis] | None = None) -> list[str]:
        """Reap dead workers, hand their jobs back, restart those whose delay is over.

        `connect` gives a Redis client for handing jobs back (None: leave that to the
        lease). Returns the lines said about what happened.
        """
        said: list[str] = []

        def tell(text: str) -> None:
            said.append(text)
            self.say(text)

        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None:
                code = slot.proc.poll()  # reaps it: no zombie
                if code is None:
                    continue
                slot.proc = None
                if code == 0 and self.burst:
                    slot.done = True
                    continue
                lived = now - slot.started_at
                slot.quick_deaths = slot.quick_deaths + 1 if lived < self.stable_s else 1
                delay = min(self.max_backoff_s, self.min_backoff_s * 2 ** (slot.quick_deaths - 1))
                slot.restart_at = now + delay
                slot.last_exit = describe_exit(code)
                handed = self._release(slot.name, slot.queues, connect)
                jobs = f"; its job {', '.join(handed)} goes back to the queue" if handed else ""
                tell(f"Workers: worker {slot.index} ({slot.last_exit} after {lived:.0f}s){jobs}; restarting in {delay:.0f}s")
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)
                slot.restarts += 1
                tell(f"Workers: worker {slot.index} restarted (pid {slot.proc.pid}, restart {slot.restarts})")
        return said

    def _release(self, name: str, queues: list[str], connect) -> list[str]:
        if connect is None:
            return []
        from .worker import release_worker

        try:
            conn = connect()
            try:
                return release_worker(conn, name, queues)
            finally:
                conn.close()
        except redis.RedisError as e:
            # Redis is down too: the lease runs out and the next cleanup retries the job.
            log.warning("could not hand back the jobs of dead worker %s: %s", name, redact(str(e)))
            return []

    def signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                slot.proc.send_signal(signum)

    def stop(self, timeout: float = 120.0) -> list[int]:
        """SIGTERM every worker (RQ finishes the current job), SIGKILL past `timeout`.

        Returns the exit codes of the workers that were running; no restart follows.
        """
        for slot in self.slots:
            slot.restart_at = None
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = []
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                codes.append(slot.proc.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                codes.append(slot.proc.wait())
            slot.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return codes

    def rows(self) -> list[tuple[int, str, int | None, str, int, str]]:
        """(index, queues, pid, state, restarts, last exit) per worker, for screens."""
        return [(s.index, ",".join(s.queues), s.pid, s.state, s.restarts, s.last_exit) for s in self.slots]
