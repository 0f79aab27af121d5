"""The model cache: one folder per name under `paths.models_dir()`.

A folder counts as a model only when its manifest is present and matches the files
(see `manifest.read_manifest`). Pulls build in a hidden sibling folder and rename it
into place, and a per-name lock file keeps two pulls of one name from racing.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import msgspec

from .. import paths
from ..contracts.model import ModelManifest
from ..filelock import FileLock
from .manifest import read_manifest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ModelNotFound(ValueError):
    """A model name that is neither a model directory nor in the cache."""


class CachedModel(msgspec.Struct, frozen=True, kw_only=True):
    """One folder of the cache; `manifest` is None when the folder is incomplete."""

    name: str
    path: str
    size: int
    manifest: ModelManifest | None


def cache_name(name: str) -> str:
    """The folder name for a model name; a Hub repo id "org/repo" becomes "org--repo"."""
    folder = name.replace("/", "--") if name.count("/") == 1 else name
    if not _NAME.fullmatch(folder) or ".." in folder:
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(or a Hugging Face repo id 'org/repo')"
        )
    return folder


def model_dir(name: str) -> Path:
    """Where model `name` lives (or would live) in the cache."""
    return paths.models_dir() / cache_name(name)


def cached(name: str) -> Path | None:
    """The folder of a complete cached model `name`, else None."""
    folder = model_dir(name)
    return folder if read_manifest(folder) is not None else None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_models() -> list[CachedModel]:
    """Every folder of the cache, complete or not, sorted by name."""
    out = []
    for folder in sorted(paths.models_dir().iterdir()):
        # Hidden entries are in-flight pulls, removals and lock files.
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        out.append(
            CachedModel(name=folder.name, path=str(folder), size=_size(folder), manifest=read_manifest(folder))
        )
    return out


@contextmanager
def locked(name: str):
    """Hold the cache's lock for `name` (blocks while another process pulls it)."""
    with FileLock(paths.models_dir() / f".{cache_name(name)}.lock"):
        yield


def staging_dir(name: str) -> Path:
    """A fresh hidden folder next to the destination, so the final rename is atomic."""
    path = Path(tempfile.mkdtemp(prefix=f".{cache_name(name)}.partial-", dir=paths.models_dir()))
    # mkdtemp makes it private (0700); a published model is readable like any cache entry.
    path.chmod(0o755)
    return path


def _discard(folder: Path) -> None:
    # Rename first so no reader ever sees a half-deleted model under its real name.
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.removed-", dir=folder.parent))
    os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def publish(staging: Path, name: str) -> Path:
    """Move a finished staging folder into place, replacing what was there."""
    dest = model_dir(name)
    if dest.exists():
        _discard(dest)
    os.replace(staging, dest)
    return dest


def remove(name: str) -> Path:
    """Delete cached model `name` (complete or not); ModelNotFound when absent."""
    dest = model_dir(name)
    with locked(name):
        if not dest.is_dir():
            raise ModelNotFound(f"model {name!r} is not in the cache ({paths.models_dir()})")
        _discard(dest)
    return dest
