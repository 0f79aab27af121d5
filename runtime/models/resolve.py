"""`resolve_model`: turn what a user typed (a name or a path) into a model directory."""

from __future__ import annotations

from pathlib import Path

from .. import paths
from . import cache
from .pull import DEFAULT_MODEL, OFFLINE_MODELS, Log, Progress, check_model_dir, pull


def resolve_model(name_or_path: str | Path, *, say: Log | None = None, progress: Progress | None = None) -> Path:
    """The directory of a model given as a path or a cached name.

    An existing directory is used as is (after checking it is an mlx-lm model). A name is
    looked up in the cache; an offline default that is not cached yet is pulled (and, for
    SmolLM2, converted) on the spot. Anything else raises `ModelNotFound`, a ValueError.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        check_model_dir(path)
        return path.resolve()
    if isinstance(name_or_path, Path) or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise cache.ModelNotFound(f"model directory not found: {path}")
    try:
        found = cache.cached(text)
    except ValueError:
        raise cache.ModelNotFound(f"unknown model {text!r}: not a directory and not a valid model name") from None
    if found is not None:
        return found
    if text in OFFLINE_MODELS:
        return Path(pull(text, say=say, progress=progress).path)
    names = [m.name for m in cache.list_models() if m.manifest is not None]
    raise cache.ModelNotFound(
        f"unknown model {text!r}: not a directory and not in the cache ({paths.models_dir()}). "
        f"Cached: {', '.join(names) or 'none'}. Pull it with `tinygpt models pull {text}` "
        f"(the offline default is {DEFAULT_MODEL!r})."
    )
