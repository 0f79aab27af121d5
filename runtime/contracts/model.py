"""The manifest of a cached MLX model: `<models_dir>/<name>/tinygpt-model.json`.

It is written last, so its presence means the directory is complete; a model folder
without it is a pull that died half-way and is pulled again. The digest pins the exact
weights and tokenizer files a trajectory or a specialist was made with.
"""

from __future__ import annotations

from .base import Contract

MODEL_MANIFEST = "tinygpt-model.json"
MODEL_MANIFEST_VERSION = 1


class ModelFile(Contract, kw_only=True):
    """One file of a model directory, by path relative to it."""

    path: str
    size: int
    sha256: str


class ModelManifest(Contract, kw_only=True):
    """What was pulled, from where, and the hash of every file."""

    schema_version: int = MODEL_MANIFEST_VERSION
    name: str
    # Where it came from: "gguf:<file>@<package>==<version>", "dir:<path>" or "hf:<repo>@<revision>".
    source: str
    # Weight dtype as stored ("float32", "bfloat16", ...; "4-bit" for MLX-quantized models).
    dtype: str
    files: list[ModelFile]
    # sha256 over the sorted "path sha256" lines of `files`: one value names the whole model.
    digest: str
    # UTC, ISO 8601.
    created_at: str
