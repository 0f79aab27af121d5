"""Watching the Redis a daemon runs against: restart the embedded one, report an outage.

The embedded redis-server is `up`'s own child: when it dies (SIGKILL, OOM, a crash) it is
reaped at once (no zombie) and started again on its data directory, where the AOF
brings back every job it had acknowledged (all but the last second with `everysec`).
Same socket, same port: workers and the runtime keep their URL and reconnect by
themselves. An external Redis ($REDIS_URL) cannot be restarted from here, so its outage
is reported - when it began and why - until it answers again.

`tick()` returns True on the tick Redis came back, so the owner can put back on the
pipeline what was sealed while it was away (`reconcile`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from tinygpt.runtime.redact import redact
from .embedded import EmbeddedRedis, EmbeddedRedisError
from .health import RedisHealth
from .supervisor import MAX_BACKOFF_S, MIN_BACKOFF_S, describe_exit

log = logging.getLogger("tinygpt.supervisor")


class RedisGuard:
    """Checks Redis every `check_s` seconds (see the module doc)."""

    def __init__(
        self,
        url: str,
        embedded: EmbeddedRedis | None = None,
        *,
        say: Callable[[str], None] = log.warning,
        check_s: float = 1.0,
    ):
        self.url = url
        self.embedded = embedded
        self.say = say
        self.check_s = check_s
        self.reachable = True
        self.error = ""
        self.down_since = 0.0
        self.restarts = 0
        self._next_check = 0.0
        self._restart_delay = MIN_BACKOFF_S
        # Short timeouts: this runs on the daemon's main loop, which must stay responsive.
        self._client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)

    @property
    def shown_url(self) -> str:
        return redact(self.url)

    def health(self) -> RedisHealth:
        return RedisHealth(url=self.shown_url, embedded=self.embedded is not None, reachable=self.reachable,
                           error=self.error, down_since=self.down_since, restarts=self.restarts)

    def tick(self) -> bool:
        """One check (when due); True when Redis has just come back after an outage."""
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_s
        if self.embedded is not None and self.embedded.exit_code() is not None:
            return self._restart_embedded()
        try:
            self._client.ping()
        except redis.RedisError as e:
            self._down(f"{type(e).__name__}: {redact(str(e))}")
            return False
        return self._up()

    def _down(self, reason: str) -> None:
        if self.reachable:
            self.reachable, self.down_since = False, time.time()
            what = "the embedded redis-server" if self.embedded is not None else "Redis"
            self.say(f"Redis: {what} at {self.shown_url} is unreachable ({reason}); the runtime keeps serving, "
                     "sealed trajectories wait on disk and are enqueued when it is back")
        self.error = reason

    def _up(self) -> bool:
        self._restart_delay = MIN_BACKOFF_S
        if self.reachable:
            return False
        self.say(f"Redis: {self.shown_url} is reachable again after {time.time() - self.down_since:.0f}s")
        self.reachable, self.error, self.down_since = True, "", 0.0
        return True

    def _restart_embedded(self) -> bool:
        server = self.embedded
        code = server.exit_code()
        old_pid = server.pid
        self._down(f"redis-server pid {old_pid} {describe_exit(code)}")
        self.say(f"Redis: the embedded redis-server (pid {old_pid}) {describe_exit(code)}; restarting it on its AOF")
        try:
            server.restart()
        except EmbeddedRedisError as e:
            self.error = str(e).splitlines()[0]
            self.say(f"Redis: restarting the embedded redis-server failed ({self.error}); retrying in {self._restart_delay:.0f}s")
            self._next_check = time.monotonic() + self._restart_delay
            self._restart_delay = min(MAX_BACKOFF_S, self._restart_delay * 2)
            return False
        self.restarts += 1
        self.say(f"Redis: embedded redis-server restarted (pid {server.pid}, AOF loaded in {server.startup_seconds:.1f}s)")
        return self._up()

    def close(self) -> None:
        self._client.close()
