"""Specialist packages: an adapter plus its card, eval report and lock."""

from __future__ import annotations

from typing import Any, Literal

from .base import Contract

SPECIALIST_VERSION = 1

Method = Literal["lora", "dora", "qlora", "distill-logit", "distill-seq"]


class SpecialistManifest(Contract):
    """What a specialist is and how it was made (`manifest.json` in its package)."""

    name: str
    version: str
    base_model: str
    base_digest: str
    method: Method
    schema_version: int = SPECIALIST_VERSION
    hyperparameters: dict[str, Any] = {}
    dataset_digest: str = ""
    metrics: dict[str, float] = {}
    created_at: float = 0.0


class SpecialistLock(Contract):
    """`lock.json`: sha256 of every file in the package, written last.

    A package directory without a lock is incomplete and ignored; `digest` is the
    sha256 over the sorted (path, sha256) pairs, the specialist's identity in pins."""

    name: str
    version: str
    files: dict[str, str]
    digest: str
    schema_version: int = SPECIALIST_VERSION


class RegistryEntry(Contract):
    name: str
    version: str
    digest: str
    path: str
    base_model: str = ""
    created_at: float = 0.0


class RegistryIndex(Contract):
    """`index.json` at a registry's root."""

    schema_version: int = SPECIALIST_VERSION
    specialists: list[RegistryEntry] = []
