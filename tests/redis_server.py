"""Pytest fixtures for a real redis-server (the embedded one, no fakeredis).

One server per test session, in a temp dir; every test gets it flushed before and after,
so tests see an empty Redis and leave nothing behind. Load with
``pytest_plugins = ["tests.redis_server"]`` (in tests/conftest.py, or in a test module).

    def test_enqueue(redis_client):
        redis_client.set("k", "v")
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tinygpt.queue.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """The session's redis-server (AOF on, like production), stopped at the end."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session server's URL, flushed around the test and exported as REDIS_URL.

    Exporting it means code under test that calls `connect()` reaches this server,
    never a developer's own Redis or their embedded one.
    """
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    with redis_server.client() as c:
        c.flushall()
    try:
        yield redis_server.url
    finally:
        with redis_server.client() as c:
            c.flushall()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client (bytes responses, as RQ needs) on a freshly flushed server."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()
