"""`tinygpt up` with pins: loads them on start, swaps a published version in, rejects a bad
pin file change, and stops its watchers cleanly."""

from __future__ import annotations

import re
import signal
import threading

import openai
import redis

from tests.hotswap_support import PROMPT, make_adapters, publish_version
from tests.registry_support import write_project
from tests.test_up import start_up, wait_for


def model_of(url: str) -> str:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="mail", messages=PROMPT, max_tokens=2, temperature=0)
    return raw.headers["x-tinygpt-model"]


def test_up_serves_pins_follows_notices_and_keeps_the_last_good_pins(tmp_path, tiny_model_dir):
    adapters = make_adapters(tmp_path / "adapters", tiny_model_dir, 2)
    publish_version(tmp_path / "reg", "1", adapters[0], tiny_model_dir)
    write_project(tmp_path, [{"name": "mail"}], ["reg"], base_model=str(tiny_model_dir))
    proc = start_up(tmp_path / "home", tmp_path, "--no-workers")
    # wait_for blocks on the next line: a line that never comes must end in a failure, not a hang.
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        # In this order: specialists loaded and watched before the runtime is announced.
        wait_for(proc, r"Specialists: serving mail@1$", lines)
        wait_for(proc, r"Specialists: watching", lines)
        url = wait_for(proc, r"Runtime: (http://\S+/v1)", lines).group(1)
        assert model_of(url) == "mail@1"
        redis_url = re.search(r"Redis: embedded redis-server at (\S+)", "".join(lines)).group(1)
        with redis.Redis.from_url(redis_url) as conn:
            assert publish_version(tmp_path / "reg", "2", adapters[1], tiny_model_dir, conn=conn).notified == 1
        wait_for(proc, r"Specialists: swapped mail 1 -> 2", lines)
        assert model_of(url) == "mail@2"
        (tmp_path / "tinygpt.project.json").write_text('{"name": "demo", "specialists": [{"name": "mail", "version": 2}]}')
        wait_for(proc, r"rejected the pin file .*specialists\[0\]\.version.*still serving mail@2", lines)
        assert model_of(url) == "mail@2"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
        watchdog.cancel()
    assert proc.returncode == 0, "".join(lines) + out
    assert "stopping the runtime" in out
