"""The parts of `tinygpt up` that must survive each other: Redis, workers, sealed files.

`Daemon` holds the worker pool (`supervisor.WorkerPool`), the Redis guard
(`redis_guard.RedisGuard`) and the trajectory directories, and `tick()` - called from
the owner's main loop every fraction of a second - keeps them together:
- a dead worker is restarted and its job handed back (only while Redis answers: with
  Redis gone the lease and RQ's cleanup retry the job once it is back);
- a dead embedded Redis is restarted; an external one's outage is reported;
- when Redis comes back, and on start, sealed trajectory files Redis has no record of
  are put back on the pipeline (`reconcile`), so a file sealed during an outage waits on
  disk and is enqueued then; files whose hand-off failed are retried on the next tick;
- `<home>/daemon.json` tells `tinygpt status` about all of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from . import health
from tinygpt.runtime.redact import redact
from .embedded import EmbeddedRedis
from .redis_guard import RedisGuard
from .supervisor import WorkerPool

log = logging.getLogger("tinygpt.supervisor")

# The health file is rewritten on every change and at least this often (a heartbeat).
HEALTH_EVERY_S = 5.0


class Daemon:
    """Ticks the worker pool and the Redis guard; reconciles sealed files (module doc)."""

    def __init__(
        self,
        redis_url: str,
        *,
        trajectory_dirs: list[Path],
        embedded: EmbeddedRedis | None = None,
        pool: WorkerPool | None = None,
        settings_loader: Callable[[], object] | None = None,
        say: Callable[[str], None] = log.warning,
        log_dir: Path | None = None,
    ):
        self.url = redis_url
        self.guard = RedisGuard(redis_url, embedded, say=say)
        self.pool = pool
        self.trajectory_dirs = trajectory_dirs
        self.settings_loader = settings_loader
        self.say = say
        self.log_dir = log_dir
        self.started_at = time.time()
        self.reconciled = 0
        # Files whose hand-off to the queue failed (the recorder's thread adds them).
        self._deferred: set[Path] = set()
        self._deferred_lock = threading.Lock()
        self._health_at = 0.0
        self._last_error = ""

    def connect(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=10)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> Daemon:
        if self.pool is not None:
            self.pool.start()
        self.reconcile()
        self._write_health()
        return self

    def defer(self, path: Path) -> None:
        """A sealed file that could not be enqueued now (Redis away): retried on a tick."""
        with self._deferred_lock:
            self._deferred.add(Path(path))

    def tick(self) -> None:
        """One round of watching; cheap when nothing happened. Never raises: a bug in
        supervision is logged (once per distinct error) and must not stop the serving."""
        try:
            self._tick()
            self._last_error = ""
        except Exception as e:
            if repr(e) != self._last_error:
                log.exception("supervision failed; still serving, retrying every tick")
            self._last_error = repr(e)

    def _tick(self) -> None:
        was_reachable, restarts = self.guard.reachable, self.guard.restarts
        came_back = self.guard.tick()
        changed = was_reachable != self.guard.reachable or restarts != self.guard.restarts
        if self.pool is not None:
            changed |= bool(self.pool.tick(self.connect if self.guard.reachable else None))
        if came_back:
            with self._deferred_lock:
                self._deferred.clear()  # the whole directory is looked at now
            self.reconcile()
        elif self.guard.reachable and self._deferred:
            with self._deferred_lock:
                paths, self._deferred = sorted(self._deferred), set()
            self.reconcile(paths)
        if changed or time.monotonic() - self._health_at > HEALTH_EVERY_S:
            self._write_health()

    def reconcile(self, files: list[Path] | None = None) -> int:
        """Put back on the pipeline the sealed files Redis does not know; how many were."""
        from .reconcile import reconcile

        try:
            conn = self.connect()
            try:
                settings = self.settings_loader() if self.settings_loader else None
                done = reconcile(self.trajectory_dirs, conn, settings=settings, files=files)
            finally:
                conn.close()
        except (redis.RedisError, OSError) as e:
            # Redis went away again (or a disk error): the next comeback (or start) reconciles.
            log.warning("reconcile: %s (Redis at %s)", redact(f"{type(e).__name__}: {e}"), redact(self.url))
            if files is not None:
                for f in files:
                    self.defer(f)
            return 0
        n = done.enqueued.files
        self.reconciled += n
        if n or files is None:
            self.say(f"Pipeline: {done.summary}")
        return n

    def health(self) -> health.DaemonHealth:
        workers = [health.WorkerHealth(index=i, queues=q, pid=pid, state=st, restarts=r, last_exit=e)
                   for i, q, pid, st, r, e in (self.pool.rows() if self.pool else [])]
        return health.DaemonHealth(pid=os.getpid(), started_at=self.started_at, updated_at=time.time(),
                                   redis=self.guard.health(), workers=workers,
                                   log_dir=str(self.log_dir or ""), reconciled=self.reconciled)

    def screen_rows(self) -> list[tuple[str, str, bool]]:
        """What a status screen shows about Redis, workers and logs: (name, value, is a warning)."""
        r = self.guard.health()
        restarts = f" (restarted {r.restarts}x)" if r.restarts else ""
        if r.reachable:
            rows = [("redis", r.url + restarts, False)]
        else:
            since = time.strftime("%H:%M:%S", time.localtime(r.down_since))
            rows = [("redis", f"{r.url} UNREACHABLE since {since} ({time.time() - r.down_since:.0f}s): {r.error}{restarts}; "
                              "serving goes on, sealed trajectories wait on disk", True)]
        if self.pool is not None:
            states = "; ".join(f"#{i} {state}" + (f" pid {pid}" if pid else "") + (f", {n} restart(s), last {last}" if n else "")
                               for i, _, pid, state, n, last in self.pool.rows())
            rows.append(("workers", states, self.pool.alive < len(self.pool.slots)))
        if self.log_dir:
            rows.append(("logs", f"{self.log_dir} (workers.log, up.log)", False))
        return rows

    def _write_health(self) -> None:
        self._health_at = time.monotonic()
        try:
            health.write(self.health())
        except OSError as e:  # a full disk must not stop the daemon
            log.warning("could not write %s: %s", health.path(), e)

    def stop(self, timeout: float = 120.0) -> None:
        """Stop the workers (current jobs finish) and forget the health report."""
        if self.pool is not None:
            self.pool.stop(timeout)
        self.guard.close()
        health.clear(os.getpid())

