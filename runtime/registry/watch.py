"""The runtime's watchers: the pin file on disk and "published" notifications on Redis.

    watchers = Watchers(swapper, redis_url=url).start()   ...   watchers.stop()

`PinFileWatcher` watches the folder of `tinygpt.project.json` (not the file: editors and
atomic writers replace it by rename, which a watch on the old inode would miss) and
syncs the swapper when that file changes. `NoticeListener` subscribes to the published
channel and hands each notice to the swapper; after every (re)subscription it syncs once,
because notices sent while it was disconnected are lost.

Both run in daemon threads that never touch MLX themselves (the swap is the engine's
model thread's work) and never die on an error: they log it and keep watching.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..contracts.base import ContractError
from .notify import channel, decode_notice
from .swap import Swapper

log = logging.getLogger("tinygpt.registry")


class PinFileWatcher(threading.Thread):
    """Sync `swapper` whenever its project file is written, replaced or created."""

    def __init__(self, swapper: Swapper, *, debounce_ms: int = 300):
        super().__init__(name="tinygpt-pin-watcher", daemon=True)
        self.swapper = swapper
        self.file = swapper.project_file
        self.debounce_ms = debounce_ms
        self._halt = threading.Event()
        self.ready = threading.Event()

    def _is_pin_file(self, change, path: str) -> bool:
        return Path(path).name == self.file.name

    def run(self) -> None:
        from watchfiles import watch

        while not self._halt.is_set():
            try:
                # `ready` is set on the first (timeout) yield: the watch is running by then.
                gen = watch(self.file.parent, watch_filter=self._is_pin_file, recursive=False,
                            debounce=self.debounce_ms, step=50, stop_event=self._halt, rust_timeout=500,
                            yield_on_timeout=True, raise_interrupt=False)
                for changes in gen:
                    self.ready.set()
                    if changes and not self._halt.is_set():
                        self._sync()
            except Exception:  # e.g. the folder went away: say so, and watch again shortly
                log.exception("watching %s failed; retrying", self.file)
                self._halt.wait(2.0)
            else:
                return

    def _sync(self) -> None:
        try:
            self.swapper.sync("pin file changed")
        except Exception:  # a watcher that dies silently would stop all swaps
            log.exception("syncing after a pin file change failed; still watching")

    def stop(self) -> None:
        self._halt.set()


class NoticeListener(threading.Thread):
    """Hand every PublishedNotice on Redis to `swapper`; reconnect when Redis goes away."""

    def __init__(self, swapper: Swapper, redis_url: str, *, retry_s: float = 2.0):
        super().__init__(name="tinygpt-notice-listener", daemon=True)
        self.swapper = swapper
        self.url = redis_url
        self.retry_s = retry_s
        self._halt = threading.Event()
        self.ready = threading.Event()
        self.subscriptions = 0

    def run(self) -> None:
        import redis

        while not self._halt.is_set():
            conn = pubsub = None
            try:
                conn = redis.Redis.from_url(self.url, socket_connect_timeout=5, health_check_interval=30)
                pubsub = conn.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(channel())
                self.subscriptions += 1
                if self.subscriptions > 1:
                    # Notices published while we were away are gone: look for ourselves.
                    self._resync()
                self.ready.set()
                while not self._halt.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._handle(message["data"])
            except redis.RedisError as e:
                from tinygpt.runtime.redact import redact

                log.warning("published notifications: Redis at %s: %s; retrying in %.0f s", redact(self.url), e, self.retry_s)
                self._halt.wait(self.retry_s)
            finally:
                if pubsub is not None:
                    pubsub.close()
                if conn is not None:
                    conn.close()

    def _resync(self) -> None:
        try:
            self.swapper.sync("resubscribed to published notifications")
        except Exception:  # keep listening whatever the sync did
            log.exception("syncing after resubscribing failed; still listening")

    def _handle(self, data: bytes) -> None:
        try:
            notice = decode_notice(data)
        except ContractError as e:
            log.warning("ignoring a malformed published notification: %s", e)
            return
        try:
            self.swapper.on_notice(notice)
        except Exception:  # keep listening whatever one notice did
            log.exception("handling the notice for %s@%s failed; still listening", notice.name, notice.version)

    def stop(self) -> None:
        self._halt.set()


class Watchers:
    """Both watchers for one swapper; `redis_url=None` watches the pin file only."""

    def __init__(self, swapper: Swapper, *, redis_url: str | None = None, debounce_ms: int = 300):
        self.pin_watcher = PinFileWatcher(swapper, debounce_ms=debounce_ms)
        self.listener = NoticeListener(swapper, redis_url) if redis_url else None

    @property
    def threads(self) -> list[threading.Thread]:
        return [t for t in (self.pin_watcher, self.listener) if t is not None]

    def start(self, *, wait: float | None = 10.0) -> Watchers:
        """Start both; with `wait`, return once they watch (or after `wait` seconds)."""
        for t in self.threads:
            t.start()
        if wait:
            for t in self.threads:
                t.ready.wait(wait)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for t in self.threads:
            t.stop()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout)
