"""Helpers for the runtime server tests: a server on port 0, raw HTTP, tiny random adapters."""

from __future__ import annotations

import contextlib
import gc
import json
import socket
from pathlib import Path

import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx)

import mlx.core as mx
from mlx.utils import tree_flatten

from tinygpt.runtime.serving.app import Runtime, ServerConfig


@contextlib.contextmanager
def running(model_dir: Path, tmp_path: Path, *, on_flushed=None, **config):
    """A started `Runtime` on 127.0.0.1:<free port>, stopped (and trajectories sealed) after."""
    cfg = ServerConfig(model=str(model_dir), port=0, trajectories_dir=str(tmp_path / "trajectories"), **config)
    rt = Runtime(cfg, on_trajectory_flushed=on_flushed).start()
    try:
        yield rt
    finally:
        rt.stop()


def raw(port: int, data: bytes, *, read: bool = True) -> tuple[int, bytes]:
    """Send raw bytes, return (status, body) of the response (status 0: connection closed)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        if not read:
            return 0, b""
        # No half-close: the server takes a closed write side for a client that left.
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    if not response.startswith(b"HTTP/"):
        return 0, response
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(port: int, path: str, body: bytes | dict, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {len(payload)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def write_lora_adapter(
    path: Path,
    model_dir: Path,
    *,
    seed: int,
    rank: int = 8,
    scale: float = 20.0,
    std: float = 0.05,
    dora: bool = False,
    keys: list[str] | None = None,
) -> Path:
    """A random LoRA (or DoRA) adapter for the model in `model_dir`, in mlx-lm's format."""
    import mlx_lm
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = mlx_lm.load(str(model_dir))
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys:
        params["keys"] = keys
    num_layers = len(model.layers)
    linear_to_lora_layers(model, num_layers, params, use_dora=dora)
    key = mx.random.key(seed)
    weights = {}
    for name, value in tree_flatten(model.trainable_parameters()):
        if name.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m"):
            key, sub = mx.random.split(key)
            if name.endswith(".m"):
                weights[name] = value * (1.0 + std * mx.random.normal(value.shape, key=sub))
            else:
                weights[name] = std * mx.random.normal(value.shape, key=sub)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "dora" if dora else "lora", "num_layers": num_layers, "lora_parameters": params}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def freed_by_emptying_the_prefix_cache(engine) -> tuple[int, int]:
    """(MLX memory freed, the prefix cache's own byte count) when the cache is emptied
    (on the model thread; benchmarks/runtime_memory.py uses it too)."""

    def clear(e) -> tuple[int, int]:
        mx.synchronize()
        gc.collect()
        before, nbytes = mx.get_active_memory(), e._prefix.nbytes
        e._prefix.trim_to(n_bytes=0)
        gc.collect()
        mx.synchronize()
        return before - mx.get_active_memory(), nbytes

    return engine.call(clear).result(timeout=60)
