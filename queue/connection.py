"""Finding Redis: REDIS_URL when it is set, else the embedded redis-server.

Every process (runtime, workers, CLI) finds Redis the same way, so a worker on another
host needs only REDIS_URL and a fresh machine needs nothing at all: the embedded server
under the cache dir starts on first use and is shared by every later process.
"""

from __future__ import annotations

import os

import redis

from tinygpt.runtime import paths
from tinygpt.runtime.redact import redact

from .embedded import EmbeddedRedis, EmbeddedRedisError

URL_ENV = "REDIS_URL"

_WHAT_TO_DO = (
    "start a Redis server there or set REDIS_URL to one that runs; "
    "unset REDIS_URL to use TinyGPT's embedded redis-server; "
    "or run `tinygpt redis` in a terminal to run the embedded server in the foreground and see its log"
)


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached (or started); the message names the URL and what to do."""

    def __init__(self, url: str, reason: str, hint: str = _WHAT_TO_DO):
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach Redis at {url}: {reason}\n  what to do: {hint}")


def redis_url() -> str:
    """`$REDIS_URL` when set, else the URL of the embedded server (started on demand).

    The on-demand server is detached: it keeps running for the next process, and
    `tinygpt redis --stop` stops it.
    """
    env = os.environ.get(URL_ENV, "").strip()
    if env:
        return env
    data_dir = paths.redis_dir()
    try:
        return EmbeddedRedis(data_dir).start(detach=True).url
    except EmbeddedRedisError as e:
        raise RedisUnavailable(
            f"the embedded redis-server ({data_dir})",
            str(e),
            "fix the cause above, or set REDIS_URL to a Redis server you run yourself",
        ) from e


def connect(url: str | None = None, **kwargs) -> redis.Redis:
    """A client for `url` (default: `redis_url()`), checked with a PING.

    Keyword arguments go to `redis.Redis.from_url`. Responses stay bytes unless asked
    otherwise, since RQ stores binary payloads.
    """
    from_env = url is None and bool(os.environ.get(URL_ENV, "").strip())
    url = url or redis_url()
    shown = redact(url)
    if from_env:
        shown = f"{shown} (from {URL_ENV})"
    # Without a connect timeout an unroutable host hangs for minutes; reads keep no
    # timeout because workers block on the queue on purpose.
    kwargs.setdefault("socket_connect_timeout", 5)
    try:
        client = redis.Redis.from_url(url, **kwargs)
    except ValueError as e:
        raise RedisUnavailable(shown, f"not a valid Redis URL ({e})") from None
    try:
        client.ping()
    except redis.RedisError as e:
        client.close()
        raise RedisUnavailable(shown, f"{type(e).__name__}: {e}") from None
    return client
