"""One place assembles the system: `runtime/stack.py` builds a runtime from a ServerConfig,
and the commands take their defaults from ServerConfig instead of writing them again."""

from __future__ import annotations

import argparse

import msgspec
import openai

from tinygpt.runtime import stack
from tinygpt.runtime.commands import serve, up
from tinygpt.runtime.serving.config import DEFAULTS, ServerConfig


def test_serve_and_up_take_their_defaults_from_server_config():
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.max_batch, args.max_queue, args.max_tokens, args.prefix_cache_mb,
            args.session_idle, args.project, args.max_body_kb << 10) == (
        DEFAULTS.host, DEFAULTS.port, DEFAULTS.max_batch, DEFAULTS.max_queue, DEFAULTS.max_tokens,
        DEFAULTS.prefix_cache_mb, DEFAULTS.session_idle_s, DEFAULTS.project, DEFAULTS.max_body_bytes)
    parser = argparse.ArgumentParser()
    up.configure(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.session_idle) == (DEFAULTS.host, DEFAULTS.port, DEFAULTS.session_idle_s)
    assert DEFAULTS == msgspec.structs.replace(ServerConfig(model="x"), model="")


def test_start_runtime_builds_a_served_runtime_with_its_queue_hook(tiny_model_dir, tmp_path):
    flushed = []
    rt = stack.start_runtime(ServerConfig(model=str(tiny_model_dir), port=0, trajectories_dir=str(tmp_path)),
                             queue=True, on_deferred=flushed.append)
    try:
        client = openai.OpenAI(base_url=f"{rt.url}/v1", api_key="none")
        assert rt.registry.base_name in {m.id for m in client.models.list().data}
        # The queue hook is wired to the recorder (it defers to `on_deferred` while Redis is away).
        assert rt.recorder is not None and rt.recorder.on_flushed is not None
    finally:
        rt.stop()
    off = stack.start_runtime(ServerConfig(model=str(tiny_model_dir), port=0, record=False))
    try:
        assert off.recorder is None
    finally:
        off.stop()
