"""`ServerConfig`: everything a runtime can be told, with its defaults written here once.

Cheap to import (msgspec only, no MLX): `tinygpt serve` reads its option defaults from
it, `runtime/stack.py` builds runtimes from it.
"""

from __future__ import annotations

import msgspec

from ..contracts.tool_mode import ToolMode


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything `tinygpt serve` can set; defaults are the command's defaults."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    # Required on /v1/* when set (Authorization: Bearer ...). Admin endpoints need
    # `admin_key` and are off without it (never the API key: see guard.py).
    api_key: str | None = None
    admin_key: str | None = None
    # Browser origins allowed to call the API (CORS); any other Origin is refused.
    allow_origins: list[str] = []
    # Directories (besides the specialist cache) the admin API may load adapters from.
    adapter_dirs: list[str] = []
    # Serve a non-loopback address without an API key anyway.
    insecure: bool = False
    # Name clients use for the base model (default: the model's name or directory name).
    name: str | None = None
    # None: sized for the device (16 / 64 on a CPU, 256 / 1024 on a GPU; engine.DEFAULT_LIMITS).
    max_batch: int | None = None
    max_queue: int | None = None
    # Share of the GPU's memory this process may take (None: $TINYGPT_MEMORY_FRACTION, else
    # no cap); ignored on the CPU backend. See runtime/device.py.
    memory_fraction: float | None = None
    max_tokens: int = 2048
    prefix_cache_mb: int = 1024
    prefill_step_size: int = 512
    max_body_bytes: int = 8 << 20
    # Open HTTP connections (one thread each); more get an immediate 503.
    max_connections: int = 256
    record: bool = True
    trajectories_dir: str | None = None
    session_idle_s: float = 600.0
    project: str = "default"
    adapters: list[tuple[str, str]] = []
    # How tools are shown (runtime/grammar/deferred.py): "full" schemas in the prompt, or
    # "deferred" (a one-line index; a chosen tool's schema fed after its name). Requests
    # may ask otherwise; `tool_modes` sets it per specialist (tinygpt.project.json pins).
    tool_mode: ToolMode = "full"
    tool_modes: dict[str, ToolMode] = {}


DEFAULTS = ServerConfig(model="")  # read by argument parsers for their defaults
