"""Helpers for the hot-swap tests: a runtime on the tiny model following a project's pins."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import openai
import pytest

from tests.serving_support import running, write_lora_adapter
from tinygpt.runtime.registry.publish import publish
from tinygpt.runtime.registry.swap import Swapper
from tinygpt.runtime.registry.watch import Watchers
from tinygpt.runtime.serving.app import model_digest

PROMPT = [{"role": "user", "content": "Send an email to Alice saying the meeting moved to Thursday."}]


def make_adapters(root: Path, model_dir: Path, n: int) -> list[Path]:
    """`n` random rank-8 LoRA adapters for the tiny model, different enough to answer differently."""
    return [write_lora_adapter(root / f"v{i}", model_dir, seed=i, std=0.2) for i in range(1, n + 1)]


def publish_version(registry: Path, version: str, adapter: Path, model_dir: Path, *, name: str = "mail", conn=None,
                    gated: bool = True):
    from tests.registry_support import passing_gate

    gate = passing_gate(adapter, name) if gated else None
    return publish(adapter, registry, name=name, version=version, base_model="tiny", base_digest=model_digest(model_dir),
                   conn=conn, gate=gate)


def wait_until(predicate, what: str, limit_s: float = 120.0) -> None:
    """Poll until `predicate()`; the limit only turns a hang into a failure, it measures nothing."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def following(model_dir: Path, tmp_path: Path, project: Path, *, redis_url: str | None = None, watch: bool = True, **config):
    """A runtime that loaded the project's pins and (with `watch`) follows the pin file and Redis."""
    config.setdefault("record", False)
    config.setdefault("prefix_cache_mb", 0)
    config.setdefault("max_tokens", 32)
    messages: list[str] = []
    with running(model_dir, tmp_path, **config) as rt:
        swapper = Swapper(rt, project, say=messages.append)
        swapper.messages = messages
        swapper.sync("start")
        watchers = Watchers(swapper, redis_url=redis_url, debounce_ms=50).start() if watch else None
        try:
            yield rt, swapper
        finally:
            if watchers is not None:
                watchers.stop()


def ask(rt, model: str = "mail", max_tokens: int = 8) -> tuple[str, str]:
    """(text, X-TinyGPT-Model) of a greedy answer."""
    client = openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)
    ban = {str(t): -100 for t in rt.engine.tokenizer.eos_token_ids}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0, logit_bias=ban
    )
    return raw.parse().choices[0].message.content, raw.headers["x-tinygpt-model"]


def serving(swapper, name: str = "mail") -> str | None:
    got = swapper.serving().get(name)
    return got[0] if got else None
