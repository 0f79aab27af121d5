"""Specialist packages: an adapter plus its card, eval report and lock; registries; pin state.

A package is `<registry>/<name>/<version>/` (see specialists/README.md). `index.json` at
the registry's root lists the complete packages; `pins.lock.json` in the TinyGPT home
records what each project's pins resolved to (and what they resolved to before, for
`tinygpt rollback`); a `PublishedNotice` on Redis tells running runtimes to look.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from .base import Contract

SPECIALIST_VERSION = 1

# kto / dpo / kto-sft: LoRA trained on preferences (failed episodes, chosen/rejected pairs)
# against reference log-probs of the starting weights (workers/training/preference.py).
Method = Literal["lora", "dora", "qlora", "distill-logit", "distill-seq", "kto", "dpo", "kto-sft"]
PREFERENCE_METHODS = ("kto", "dpo", "kto-sft")
METHODS: tuple[str, ...] = typing.get_args(Method)


def adapter_weights_digest(config_sha256: str, weights_sha256: str) -> str:
    """The identity of an adapter's weights, from the sha256 of its two files (what the eval
    gate records as the candidate's `adapter_digest` for an adapter directory, and what a
    package's lock lets anyone recompute without reading the weights)."""
    import hashlib

    lines = f"adapter_config.json {config_sha256}\nadapters.safetensors {weights_sha256}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


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
    # What it was trained on and how much (for the model card and audits).
    dataset: str = ""
    dataset_rows: int = 0
    dataset_tokens: int = 0
    trained_tokens: int = 0
    # The gate's verdict ("pass", or "not gated" for a hand publish with --no-gate) and
    # the baseline's metric values, suite by suite, next to `metrics` (the candidate's).
    gate_verdict: str = ""
    baseline: str = ""
    baseline_metrics: dict[str, float] = {}
    intended_use: str = ""


class SpecialistLock(Contract):
    """`lock.json`: sha256 of every file in the package, written last.

    A package directory without a lock is incomplete and ignored; `digest` is the
    sha256 over the sorted (path, sha256) pairs, the specialist's identity in pins."""

    name: str
    version: str
    files: dict[str, str]
    digest: str
    schema_version: int = SPECIALIST_VERSION
    # Byte size of every file: a download stops as soon as a file outgrows its size.
    # Part of the digest when present (locks written before sizes existed keep theirs).
    sizes: dict[str, int] = {}


class RegistryEntry(Contract):
    name: str
    version: str
    # The package lock's digest.
    digest: str
    # The package directory, relative to the registry's root ("<name>/<version>").
    path: str
    base_model: str = ""
    created_at: float = 0.0
    # The base weights it was trained on: a runtime skips versions made for another base.
    base_digest: str = ""
    method: str = ""


class RegistryIndex(Contract):
    """`index.json` at a registry's root."""

    schema_version: int = SPECIALIST_VERSION
    specialists: list[RegistryEntry] = []


class PublishedNotice(Contract):
    """Redis pub/sub message: a version was just published (a hint; the registry is the truth)."""

    name: str
    version: str
    digest: str
    registry: str
    schema_version: int = SPECIALIST_VERSION
    base_digest: str = ""
    published_at: float = 0.0


class ResolvedVersion(Contract):
    """One version a pin resolved to: where it came from and its verified copy in the cache."""

    version: str
    digest: str
    registry: str = ""
    path: str = ""
    at: float = 0.0


class SpecialistState(Contract):
    name: str
    current: ResolvedVersion | None = None
    # Earlier versions, oldest first (what `tinygpt rollback` goes back to).
    history: list[ResolvedVersion] = []
    # The last problem resolving, pulling or loading it (empty when the last try worked).
    error: str = ""
    error_at: float = 0.0


class ProjectState(Contract):
    project_file: str
    project: str = ""
    specialists: list[SpecialistState] = []
    # A pin file that could not be read the last time it was tried (the previous good pins stay).
    error: str = ""
    updated_at: float = 0.0

    def specialist(self, name: str) -> SpecialistState | None:
        return next((s for s in self.specialists if s.name == name), None)


class PinsLock(Contract):
    """`pins.lock.json` in the TinyGPT home: per project file, what its pins resolved to."""

    schema_version: int = SPECIALIST_VERSION
    projects: list[ProjectState] = []


class PublishResult(Contract):
    """What the publish stage (or `tinygpt publish`) did."""

    name: str
    version: str
    digest: str
    path: str
    registry: str
    # False when this version with these weights was already published (nothing written).
    created: bool = True
    # Runtimes that received the "published" notification (-1: no Redis to notify).
    notified: int = -1
