"""Hashing a model directory and reading / writing its `tinygpt-model.json` manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, UTC
from pathlib import Path

from ..contracts.base import ContractError
from ..contracts.io import read_json, write_json
from ..contracts.model import MODEL_MANIFEST, MODEL_MANIFEST_VERSION, ModelFile, ModelManifest
from ..hashing import sha256_file

# safetensors dtype codes -> the names configs use.
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def hash_files(model_dir: Path, *, sha256: Callable[[Path], str] = sha256_file) -> list[ModelFile]:
    """Every file under `model_dir` except the manifest, sorted by relative path.

    `sha256` hashes one file (the eval gate passes its memo of unchanged files)."""
    model_dir = Path(model_dir)
    files = []
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir).as_posix()
        if p.is_file() and rel != MODEL_MANIFEST:
            files.append(ModelFile(path=rel, size=p.stat().st_size, sha256=sha256(p)))
    return files


def digest_of(files: list[ModelFile]) -> str:
    """One sha256 naming the whole model: over sorted "path sha256" lines."""
    lines = "".join(f"{f.path} {f.sha256}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()


def model_digest(model_dir: Path, *, sha256: Callable[[Path], str] = sha256_file) -> str:
    """The model's identity: its manifest's digest, else the same hash computed over its files."""
    manifest = read_manifest(model_dir)
    return manifest.digest if manifest is not None else digest_of(hash_files(model_dir, sha256=sha256))


def weights_dtype(model_dir: Path) -> str:
    """The stored weight type: "4-bit" etc. for MLX-quantized models, else the dtype
    holding the most bytes across the safetensors files (read from their headers)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict) and "bits" in quant:
        return f"{quant['bits']}-bit"
    totals: dict[str, int] = {}
    for st in model_dir.glob("*.safetensors"):
        with open(st, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for key, info in header.items():
            if key != "__metadata__":
                start, end = info["data_offsets"]
                totals[info["dtype"]] = totals.get(info["dtype"], 0) + end - start
    if not totals:
        return "unknown"
    code = max(totals, key=totals.get)
    return _SAFETENSORS_DTYPES.get(code, code.lower())


def write_manifest(model_dir: Path, *, name: str, source: str, dtype: str) -> ModelManifest:
    """Hash `model_dir` and write its manifest. Call it last: it marks the model complete."""
    files = hash_files(model_dir)
    manifest = ModelManifest(
        name=name,
        source=source,
        dtype=dtype,
        files=files,
        digest=digest_of(files),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_json(Path(model_dir) / MODEL_MANIFEST, manifest)
    return manifest


def read_manifest(model_dir: Path) -> ModelManifest | None:
    """The manifest of a complete model directory, or None when it is missing, unreadable,
    of another schema version, or names a file that is gone or has another size (a broken
    or half-written model)."""
    model_dir = Path(model_dir)
    try:
        manifest = read_json(model_dir / MODEL_MANIFEST, ModelManifest)
    except ContractError:
        return None
    if manifest.schema_version != MODEL_MANIFEST_VERSION:
        return None
    for f in manifest.files:
        p = model_dir / f.path
        if not p.is_file() or p.stat().st_size != f.size:
            return None
    return manifest
