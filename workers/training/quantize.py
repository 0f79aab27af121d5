"""QLoRA's base: the base model quantized once (mlx-lm's `quantize_model`) and cached.

The quantized copy is an ordinary entry of the model cache, named after the base's
digest and the quantization settings, with its own manifest and digest: the adapter
records exactly which 4-bit weights it was trained against, and `mlx_lm.load` serves
that directory (plus the adapter) like any other model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

# Files the quantized copy must not inherit from the base: weights, config and manifest
# are rewritten; everything else (tokenizer, chat template, generation config) is copied
# byte for byte so both tokenize identically.
_REWRITTEN = ("config.json", "model.safetensors.index.json", "tinygpt-model.json")


def quantized_name(base_dir: Path, base_digest: str, bits: int, group_size: int) -> str:
    return f"{base_dir.name}-q{bits}g{group_size}-{base_digest[:12]}"


def quantized_base(
    base_dir: Path, base_digest: str, *, bits: int = 4, group_size: int = 64, say: Callable[[str], None] = print
) -> tuple[Path, str]:
    """The cached quantized copy of `base_dir` (made on first use) and its digest."""
    from tinygpt.runtime.models import cache
    from tinygpt.runtime.models.manifest import model_digest, write_manifest

    name = quantized_name(base_dir, base_digest, bits, group_size)
    with cache.locked(name):
        found = cache.cached(name)
        if found is not None:
            return found, model_digest(found)
        say(f"quantizing {base_dir.name} to {bits} bits (group size {group_size}) for QLoRA, cached as {name}")
        staging = cache.staging_dir(name)
        try:
            _quantize_into(base_dir, staging, bits, group_size)
            write_manifest(staging, name=name, source=f"quantized:{base_digest}", dtype=f"{bits}-bit")
            path = cache.publish(staging, name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return path, model_digest(path)


def _quantize_into(base_dir: Path, dest: Path, bits: int, group_size: int) -> None:
    import mlx.core as mx
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(base_dir, lazy=True)
    if config.get("quantization"):
        raise ValueError(f"{base_dir} is already quantized; QLoRA needs a full-precision base")
    model, qconfig = quantize_model(model, config, group_size, bits)
    mx.eval(model.parameters())
    save_model(dest, model, donate_model=True)
    for src in sorted(base_dir.iterdir()):
        if src.is_file() and src.name not in _REWRITTEN and not src.name.endswith(".safetensors"):
            shutil.copy2(src, dest / src.name)
    save_config(qconfig, config_path=dest / "config.json")
