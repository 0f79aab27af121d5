"""`tinygpt up`: the whole stack as a user starts it, stopped the way a user stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import openai
import pytest
import redis


def start_up(home, cwd, *args):
    env = {**os.environ, "TINYGPT_HOME": str(home)}
    env.pop("REDIS_URL", None)  # the embedded server is what `up` starts by default
    return subprocess.Popen(
        [sys.executable, "-m", "tinygpt.runtime.cli", "up", "--plain", "--port", "0", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for(proc, pattern, lines, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    proc.kill()
    pytest.fail(f"never saw {pattern!r}:\n{''.join(lines)}")


def test_up_serves_records_and_stops_cleanly(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    proc = start_up(home, tmp_path, "--model", str(tiny_model_dir))
    lines: list[str] = []
    try:
        url = wait_for(proc, r"Runtime: (http://\S+/v1)", lines).group(1)
        client = openai.OpenAI(base_url=url, api_key="unused")
        reply = client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        redis_url = re.search(r"Redis: embedded redis-server at (\S+)", "".join(lines)).group(1)
        conn = redis.Redis.from_url(redis_url)
        assert conn.config_get("appendonly")["appendonly"] == "yes"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "stopping the embedded Redis" in text
    # Redis is down, its AOF is on disk, and the sealed trajectory reached the pipeline.
    with pytest.raises(redis.ConnectionError):
        conn.ping()
    assert (home / "redis" / "appendonly.aof").stat().st_size > 0
    assert list((home / "trajectories").rglob("*.msgpack")) or list((home / "trajectories").rglob("*.json"))


def test_up_refuses_a_bad_project_file_with_exit_2(tmp_path):
    (tmp_path / "tinygpt.project.json").write_text('{"name": "demo", "base_model": 5}')
    proc = start_up(tmp_path / "home", tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "tinygpt.project.json" in out and "$.base_model" in out
    # Nothing was started: no Redis data directory with a running server.
    assert not (tmp_path / "home" / "redis" / "server.json").exists()


def test_the_status_screen_draws_a_bar_per_running_long_job(monkeypatch):
    import argparse

    from rich.console import Console

    from tinygpt.queue import overview
    from tinygpt.runtime.stack import Stack
    from tinygpt.runtime.contracts.jobs import JobProgress

    now = time.time()
    train = JobProgress(job_id="j1", stage="finetune", done=12, total=24, label="fileops: lora", unit="step",
                        detail="loss 0.812 · 410 tok/s", started=now - 30, updated=now)
    ov = overview.Overview(redis=overview.RedisInfo(url="redis://x", reachable=True))
    ov.running = [overview.Running("j1", "train", "finetune", "w1", None, train),
                  overview.Running("j2", "data", "dedupe", "w1", None)]
    monkeypatch.setattr(overview, "collect", lambda limit=5: ov)
    stack = Stack(args=argparse.Namespace(), console=None, model="tiny", project_name="default")
    console = Console(width=160, record=True)
    console.print(stack._screen())
    text = console.export_text()
    assert "fileops: lora" in text and "12/24 step" in text and "ETA 30s" in text and "loss 0.812" in text
    assert re.search(r"dedupe\s+│?\s*j2", text)  # a job without progress still shows, by id
