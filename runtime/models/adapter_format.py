"""The adapter format: what an adapter directory must hold, which base it belongs to, its digest.

An adapter is mlx-lm's own directory (`adapter_config.json` + `adapters.safetensors`,
what `mlx_lm.load(base, adapter_path=dir)` serves). TinyGPT adds the base it was trained
on (by digest: the training record, else the `tinygpt` key of the config) and, once
packaged, a manifest and a lock. Serving, the registry and the eval gate all read it
here; a refusal is an `AdapterFormatError` that each layer answers its own way (HTTP
400, a package error, a gate input error), so none of them imports another's.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from ..contracts.base import ContractError
from ..contracts.io import read_json
from ..contracts.specialist import SpecialistLock, SpecialistManifest, adapter_weights_digest
from ..contracts.training import TRAINING_RECORD, TrainingRecord
from ..hashing import sha256_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_METHODS = ("lora", "dora")


class AdapterFormatError(ValueError):
    """An adapter directory that cannot be used as one: missing or unreadable files, an
    incomplete config, or weights trained on another base. The message names the problem."""


class AdapterInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    digest: str
    path: str
    method: str
    rank: int
    loaded_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


def adapter_digest(path: Path) -> str:
    """The identity of the weights in an adapter directory: sha256 over its two files."""
    return adapter_weights_digest(sha256_file(path / ADAPTER_CONFIG), sha256_file(path / ADAPTER_WEIGHTS))


def recorded_base(adapter_dir: Path) -> tuple[str, str] | None:
    """(base model, base digest) an adapter records: its training record, else its config."""
    record = adapter_dir / TRAINING_RECORD
    if record.is_file():
        try:
            rec = read_json(record, TrainingRecord)
        except ContractError as e:
            raise AdapterFormatError(str(e)) from None
        return rec.base_model, rec.base_digest
    try:
        info = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("tinygpt") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise AdapterFormatError(f"{adapter_dir / ADAPTER_CONFIG}: unreadable ({e})") from None
    return (info.get("base_model", ""), info["base_digest"]) if info.get("base_digest") else None


def read_adapter(path: str | Path, name: str, version: str | None, base_digest: str) -> AdapterInfo:
    """Check an adapter directory (mlx-lm format) and describe it; touches no arrays.

    The digest is the package lock's when there is one (the identity pins use), else a
    sha256 over the two adapter files. The version defaults to the package manifest's,
    else the digest's first 12 hex digits. An adapter trained on another base is refused.
    """
    path = Path(path).expanduser()
    config_file, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    for f in (config_file, weights):
        if not f.is_file():
            raise AdapterFormatError(
                f"adapter {name!r}: {f} not found (expected mlx-lm's adapter_config.json + adapters.safetensors)"
            )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise AdapterFormatError(f"adapter {name!r}: unreadable {config_file}: {e}") from None
    method = config.get("fine_tune_type", "lora") if isinstance(config, dict) else None
    if method not in ADAPTER_METHODS:
        raise AdapterFormatError(f"adapter {name!r}: fine_tune_type {method!r} is not one of {ADAPTER_METHODS}")
    params = config.get("lora_parameters")
    if not isinstance(params, dict) or not isinstance(params.get("rank"), int) or "scale" not in params:
        raise AdapterFormatError(f"adapter {name!r}: adapter_config.json needs lora_parameters with rank and scale")
    if not isinstance(config.get("num_layers"), int):
        raise AdapterFormatError(f"adapter {name!r}: adapter_config.json needs an integer num_layers")

    manifest = lock = None
    try:
        if (path / "manifest.json").is_file():
            manifest = read_json(path / "manifest.json", SpecialistManifest)
        if (path / "lock.json").is_file():
            lock = read_json(path / "lock.json", SpecialistLock)
    except ContractError as e:
        raise AdapterFormatError(f"adapter {name!r}: {e}") from None
    if manifest and manifest.base_digest and base_digest and manifest.base_digest != base_digest:
        raise AdapterFormatError(
            f"adapter {name!r} was trained on base {manifest.base_model} ({manifest.base_digest[:12]}), "
            f"not on the served base ({base_digest[:12]})"
        )
    digest = lock.digest if lock is not None else adapter_digest(path)
    version = version or (manifest.version if manifest else digest[:12])
    return AdapterInfo(
        name=name, version=version, digest=digest, path=str(path.resolve()), method=method, rank=params["rank"]
    )
