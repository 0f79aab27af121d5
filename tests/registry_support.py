"""Helpers for the registry and hot-swap tests: adapters, registries, pin files, an HTTP registry."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import threading
from pathlib import Path

from tinygpt.runtime.registry.publish import publish

# Any 64 hex digits will do where no real base model is involved.
FAKE_BASE = "b" * 64


def fake_adapter(path: Path, *, seed: int = 0, size: int = 4096) -> Path:
    """An adapter directory with the right files but random bytes: enough to package, not to serve."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0}}
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapters.safetensors").write_bytes(seed.to_bytes(4, "big") + os.urandom(size))
    return path


def write_project(path: Path, specialists: list[dict], registries: list[str], **extra) -> Path:
    """A tinygpt.project.json in folder `path` (written atomically, as an editor's save would be)."""
    from tinygpt.runtime.contracts.io import atomic_write_bytes

    body = {"name": "demo", "base_model": "tiny", "specialists": specialists, "registries": registries, **extra}
    atomic_write_bytes(path / "tinygpt.project.json", (json.dumps(body, indent=2) + "\n").encode())
    return path / "tinygpt.project.json"


def passing_gate(adapter: Path, name: str):
    """A gate result that passed for exactly the weights in `adapter` (what `"*"` pins require)."""
    from tinygpt.runtime.contracts import EvalReport, GateResult
    from tinygpt.runtime.contracts.specialist import adapter_weights_digest
    from tinygpt.runtime.hashing import sha256_file

    digest = adapter_weights_digest(sha256_file(adapter / "adapter_config.json"), sha256_file(adapter / "adapters.safetensors"))
    candidate = EvalReport(model="tiny", model_digest=FAKE_BASE, adapter="adapter", adapter_digest=digest)
    return GateResult(verdict="pass", candidate=candidate, message="all 0 suite(s) passed", extra={"subject": name})


def publish_fake(registry: Path, name: str, version: str, adapter_root: Path, *, seed: int = 0, base_digest: str = FAKE_BASE,
                 gated: bool = True):
    adapter = fake_adapter(adapter_root / f"{name}-{version}", seed=seed)
    gate = passing_gate(adapter, name) if gated else None
    return publish(adapter, registry, name=name, version=version, base_model="tiny", base_digest=base_digest, gate=gate)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output readable
        pass


@contextlib.contextmanager
def http_registry(root: Path):
    """Serve folder `root` on http://127.0.0.1:<free port>; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def free_port() -> int:
    """A loopback port nothing listens on (bound and released), for "registry is down" tests."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
