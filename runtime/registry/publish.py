"""Publishing: a gated adapter becomes a package in a local registry, listed in its index,
announced on Redis. The publish stage (workers/publish.py) and `tinygpt publish` share it.

    check_gate(gate, adapter_dir, name)        refuse anything but a pass for these weights
    publish(adapter_dir, registry, name=...)   package + index entry + notification

Publishing the same weights again is a no-op that returns the existing version, so a
retried publish job never creates a second version.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..contracts.base import ContractError
from ..contracts.evals import GateResult
from ..contracts.io import read_json
from ..contracts.specialist import PublishedNotice, PublishResult
from ..hashing import sha256_file
from .errors import PackageError
from .files import check_name
from .index import add_entry, entry_for, next_version, read_index
from .notify import notify
from .package import ADAPTER_WEIGHTS, LOCK, build_package, read_lock

log = logging.getLogger("tinygpt.registry")


def local_registry(spec: str, base_dir: Path) -> Path:
    """The folder of a registry we can write to: a directory or a file:// URL."""
    if spec.startswith(("http://", "https://")):
        raise PackageError(f"cannot publish into {spec}: an HTTP registry is read-only; publish into the folder it serves")
    if "://" in spec:
        if urlsplit(spec).scheme != "file":
            raise PackageError(f"cannot publish into {spec}: use a directory or a file:// URL")
        return Path(unquote(urlsplit(spec).path))
    path = Path(spec).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def read_gate(path: Path) -> GateResult:
    try:
        return read_json(path, GateResult)
    except ContractError as e:
        raise PackageError(f"gate result: {e}") from None


def check_gate(gate: GateResult, adapter_dir: Path, name: str) -> None:
    """Refuse unless the gate passed, for these exact weights and this specialist."""
    from ..models.adapter_format import AdapterFormatError, read_adapter

    if gate.verdict != "pass":
        raise PackageError(f"the eval gate did not pass ({gate.verdict}: {gate.message or 'no message'}); not publishing {name}")
    subject = gate.extra.get("subject") if isinstance(gate.extra, dict) else None
    if subject and subject != name:
        raise PackageError(f"the gate result is for specialist {subject!r}, not {name!r}")
    if gate.candidate.adapter_digest:
        try:
            digest = read_adapter(adapter_dir, name, None, "").digest
        except AdapterFormatError as e:
            raise PackageError(str(e)) from None
        if digest != gate.candidate.adapter_digest:
            raise PackageError(
                f"the gate result is for other weights (adapter digest {gate.candidate.adapter_digest[:12]}) "
                f"than {adapter_dir} ({digest[:12]}): run the gate on this adapter"
            )


def _published_with_same_weights(registry: Path, name: str, adapter_dir: Path) -> str | None:
    """The version of `name` already published with these exact weights, if any."""
    sha = sha256_file(adapter_dir / ADAPTER_WEIGHTS)
    for e in read_index(registry).specialists if (registry / "index.json").is_file() else []:
        if e.name != name:
            continue
        lock = read_lock(registry / e.path) if (registry / e.path / LOCK).is_file() else None
        if lock is not None and lock.files.get(ADAPTER_WEIGHTS) == sha:
            return e.version
    return None


def publish(adapter_dir: Path, registry: Path, *, name: str, version: str | None = None, base_model: str = "",
            base_digest: str = "", gate: GateResult | None = None, intended_use: str = "", conn=None) -> PublishResult:
    """Package `adapter_dir` as `name@version` into `registry`, index it, and notify on `conn`.

    `version=None` reuses the version already published with these weights, else takes
    the next whole number. `conn` (a redis.Redis) is optional: without it nobody is told.
    """
    adapter_dir, registry = Path(adapter_dir), Path(registry)
    check_name(name)
    registry.mkdir(parents=True, exist_ok=True)
    if not version:
        version = _published_with_same_weights(registry, name, adapter_dir) or next_version(read_index(registry), name)
    built = build_package(adapter_dir, registry, name=name, version=version, base_model=base_model,
                          base_digest=base_digest, gate=gate, intended_use=intended_use)
    entry = entry_for(registry, Path(built.path), built.lock, built.manifest)
    add_entry(registry, entry)
    result = PublishResult(name=name, version=version, digest=built.lock.digest, path=built.path,
                           registry=str(registry.resolve()), created=built.created)
    if conn is not None:
        notice = PublishedNotice(name=name, version=version, digest=built.lock.digest, registry=result.registry,
                                 base_digest=built.manifest.base_digest, published_at=entry.created_at)
        result.notified = notify(conn, notice)
    log.info("published %s@%s (%s) in %s", name, version, built.lock.digest[:12], registry)
    return result
