"""Where TinyGPT keeps its state: one cache directory, overridable by environment.

`TINYGPT_HOME` moves everything (models, embedded Redis data, trajectories, datasets);
the default follows XDG so a user's home stays tidy.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The root cache directory (created on first use)."""
    env = os.environ.get("TINYGPT_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "tinygpt"
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """MLX models, one folder per name: `<home>/models/<name>/`."""
    return subdir("models")


def redis_dir() -> Path:
    """Data directory of the embedded redis-server (AOF lives here)."""
    return subdir("redis")
