"""Specialist packages: build one from an adapter directory, read and verify one.

    <registry>/<name>/<version>/
        adapter_config.json, adapters.safetensors   the mlx-lm adapter
        training_record.json, metrics.jsonl         how it was trained (when known)
        eval_report.json                            the eval gate's GateResult
        manifest.json                               SpecialistManifest
        README.md                                   the model card
        lock.json                                   sha256 of every file above, written last

A package is built in a hidden staging folder next to its destination and renamed into
place, with `lock.json` written last inside it: a version folder without a lock is
incomplete (a crash, or a copy in progress) and every reader ignores it. Versions are
immutable: publishing the same version again with other weights is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import msgspec

from ..contracts.base import ContractError
from ..contracts.dataset import DatasetManifest
from ..contracts.evals import GateResult
from ..contracts.io import read_json, write_json
from ..contracts.specialist import METHODS, SpecialistLock, SpecialistManifest, adapter_weights_digest
from ..contracts.training import TRAINING_RECORD, TrainingRecord
from ..hashing import sha256_file
from ..models import adapter_format
from ..models.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterFormatError
from .card import render_card
from .errors import IntegrityError, PackageError
from .files import check_name, check_version, fsync_tree, move_into_place, safe_relative, staging_dir

LOCK = "lock.json"
MANIFEST = "manifest.json"
CARD = "README.md"
EVAL_REPORT = "eval_report.json"
# Copied along when the training run left them (the record names base, data and settings).
EXTRA_FILES = (TRAINING_RECORD, "metrics.jsonl")


class Built(msgspec.Struct, kw_only=True):
    path: str
    lock: SpecialistLock
    manifest: SpecialistManifest
    # False when this exact version with these weights was already in the registry.
    created: bool


def lock_digest(files: dict[str, str], sizes: dict[str, int] | None = None) -> str:
    """The package's identity: sha256 over sorted "path sha256[ size]" lines (like a model digest).

    Sizes are part of it when the lock has them, so a pinned digest also pins the caps
    downloads are held to.
    """
    if sizes:
        return hashlib.sha256("".join(f"{p} {files[p]} {sizes[p]}\n" for p in sorted(files)).encode()).hexdigest()
    return hashlib.sha256("".join(f"{p} {files[p]}\n" for p in sorted(files)).encode()).hexdigest()


def read_lock(package: Path) -> SpecialistLock | None:
    """The package's lock, or None when it has none (incomplete); PackageError if unreadable."""
    path = Path(package) / LOCK
    if not path.is_file():
        return None
    try:
        return read_json(path, SpecialistLock)
    except ContractError as e:
        raise PackageError(str(e)) from None


def read_manifest(package: Path) -> SpecialistManifest:
    try:
        return read_json(Path(package) / MANIFEST, SpecialistManifest)
    except ContractError as e:
        raise PackageError(str(e)) from None


def check_lock(lock: SpecialistLock, source: str) -> None:
    """A lock that is consistent with itself: safe paths, well-formed hashes, matching digest."""
    check_name(lock.name)
    check_version(lock.version)
    for rel, sha in lock.files.items():
        safe_relative(rel, source)
        if rel == LOCK:
            raise PackageError(f"{source}: the lock lists itself")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise PackageError(f"{source}: {rel} has no valid sha256 ({sha!r})")
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST):
        if required not in lock.files:
            raise PackageError(f"{source}: the package has no {required}")
    if lock.sizes and (set(lock.sizes) != set(lock.files) or any(n < 0 for n in lock.sizes.values())):
        raise PackageError(f"{source}: the lock's sizes do not list exactly its files")
    if lock_digest(lock.files, lock.sizes) != lock.digest:
        raise IntegrityError(f"{source}: the lock's digest {lock.digest[:12]} does not match the files it lists")


def verify_package(package: Path, *, name: str | None = None, version: str | None = None,
                   digest: str | None = None) -> SpecialistLock:
    """Check every file of a package against its lock (and the expected identity).

    Raises PackageError for an incomplete or inconsistent package, IntegrityError when a
    file's bytes are not what the lock says, or when a file is there that the lock does not
    list (an adapter directory must hold exactly what was verified).
    """
    package = Path(package)
    lock = read_lock(package)
    if lock is None:
        raise PackageError(f"{package}: no {LOCK} (an incomplete package)")
    where = str(package / LOCK)
    check_lock(lock, where)
    if name is not None and lock.name != name or version is not None and lock.version != version:
        raise PackageError(f"{where}: the lock is for {lock.name}@{lock.version}, expected {name}@{version}")
    if digest is not None and lock.digest != digest:
        raise IntegrityError(f"{where}: {lock.name}@{lock.version} has digest {lock.digest[:12]}, expected {digest[:12]}")
    present = {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} - {LOCK}
    extra = sorted(present - set(lock.files))
    if extra:
        raise IntegrityError(f"{package}: files not in the lock: {', '.join(extra)}")
    for rel, expected in sorted(lock.files.items()):
        f = package / rel
        if not f.is_file():
            raise IntegrityError(f"{package}: {rel} is missing (listed in the lock)")
        if lock.sizes and f.stat().st_size != lock.sizes[rel]:
            raise IntegrityError(f"{package}: {rel} is {f.stat().st_size} bytes, the lock says {lock.sizes[rel]}: refused")
        got = sha256_file(f)
        if got != expected:
            raise IntegrityError(f"{package}: {rel} has sha256 {got[:12]}, the lock says {expected[:12]}: refused")
    return lock


def gate_problem(lock: SpecialistLock, gate: GateResult | None) -> str | None:
    """Why a package may not be picked by a `"*"` pin (None: its gate passed for exactly
    its weights). `gate` is the package's eval report, None when it has none."""
    if gate is None:
        return "published without an eval gate (--no-gate)"
    if gate.verdict != "pass":
        return f"its eval gate verdict is {gate.verdict}"
    subject = gate.extra.get("subject") if isinstance(gate.extra, dict) else None
    if subject and subject != lock.name:
        return f"its gate result is for {subject!r}"
    weights = adapter_weights_digest(lock.files.get(ADAPTER_CONFIG, ""), lock.files.get(ADAPTER_WEIGHTS, ""))
    if gate.candidate.adapter_digest != weights:
        got = (gate.candidate.adapter_digest or "none")[:12]
        return f"its gate result is for other weights ({got}, the package holds {weights[:12]})"
    return None


# ---------------------------------------------------------------- building


def recorded_base(adapter_dir: Path) -> tuple[str, str] | None:
    """(base model, base digest) an adapter records (see `adapter_format.recorded_base`)."""
    try:
        return adapter_format.recorded_base(adapter_dir)
    except AdapterFormatError as e:
        raise PackageError(str(e)) from None


def _training(adapter_dir: Path) -> tuple[TrainingRecord | None, DatasetManifest | None]:
    path = adapter_dir / TRAINING_RECORD
    if not path.is_file():
        return None, None
    record = read_json(path, TrainingRecord)
    dataset = None
    ds_manifest = Path(record.dataset_dir) / "manifest.json"
    if ds_manifest.is_file():
        # The dataset may live on another machine or be gone: rows and tokens are then unknown.
        try:
            dataset = read_json(ds_manifest, DatasetManifest)
        except ContractError:
            dataset = None
    return record, dataset


def _eval_metrics(gate: GateResult | None) -> tuple[dict[str, float], dict[str, float]]:
    if gate is None:
        return {}, {}
    cand = {f"{s.suite}/{s.metric}": float(s.metric_value) for s in gate.candidate.suites}
    base = {f"{s.suite}/{s.metric}": float(s.metric_value) for s in gate.baseline.suites} if gate.baseline else {}
    return cand, base


def make_manifest(adapter_dir: Path, *, name: str, version: str, base_model: str, base_digest: str,
                  gate: GateResult | None, intended_use: str, created_at: float,
                  record: TrainingRecord | None, dataset: DatasetManifest | None) -> SpecialistManifest:
    """The manifest, from the training record when there is one, else the adapter config."""
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise PackageError(f"{adapter_dir / ADAPTER_CONFIG}: unreadable ({e})") from None
    cand, base = _eval_metrics(gate)
    if record is not None:
        method, hyper = record.method, msgspec.to_builtins(record.hyperparameters)
        cand |= {f"train/{k}": v for k, v in record.metrics.items()}
    else:
        method = config.get("fine_tune_type", "lora")
        hyper = {"num_layers": config.get("num_layers"), **(config.get("lora_parameters") or {})}
    if method not in METHODS:
        raise PackageError(f"{adapter_dir / ADAPTER_CONFIG}: unknown method {method!r} (one of {', '.join(METHODS)})")
    return SpecialistManifest(
        name=name, version=version, base_model=base_model, base_digest=base_digest, method=method,
        hyperparameters=hyper, dataset_digest=record.dataset_digest if record else "", metrics=cand,
        created_at=created_at, dataset=record.dataset_name if record else "",
        dataset_rows=dataset.rows if dataset else 0, dataset_tokens=dataset.tokens if dataset else 0,
        trained_tokens=int(record.metrics.get("trained_tokens", 0)) if record else 0,
        gate_verdict=gate.verdict if gate else "not gated", baseline=gate.baseline_source if gate else "",
        baseline_metrics=base, intended_use=intended_use,
    )


def _same_weights(existing: Path, adapter_dir: Path) -> bool:
    lock = read_lock(existing)
    return lock is not None and lock.files.get(ADAPTER_WEIGHTS) == sha256_file(adapter_dir / ADAPTER_WEIGHTS)


def build_package(adapter_dir: Path, registry: Path, *, name: str, version: str, base_model: str = "",
                  base_digest: str = "", gate: GateResult | None = None, intended_use: str = "") -> Built:
    """Write `<registry>/<name>/<version>/` from an adapter directory; the lock goes last.

    The base (name and digest) comes from the adapter's training record or config; the
    arguments fill in for an adapter that records none, and must agree when both exist.
    Publishing an existing version again with the same weights returns it unchanged.
    """
    adapter_dir, registry = Path(adapter_dir), Path(registry).resolve()
    check_name(name)
    check_version(version)
    for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / f).is_file():
            raise PackageError(f"{adapter_dir}: no {f} (expected an mlx-lm adapter directory)")
    recorded = recorded_base(adapter_dir)
    if recorded is not None:
        if base_digest and recorded[1] != base_digest:
            raise PackageError(
                f"{adapter_dir} was trained on {recorded[0]} ({recorded[1][:12]}), not on the base given ({base_digest[:12]})"
            )
        base_model, base_digest = base_model or recorded[0], recorded[1]
    if not base_digest:
        raise PackageError(f"{adapter_dir} records no base model digest: name the base model it was trained on")

    dest = registry / name / version
    if dest.exists():
        if read_lock(dest) is None:
            # A leftover from a crashed publish: never complete, never indexed, safe to replace.
            shutil.rmtree(dest)
        elif _same_weights(dest, adapter_dir):
            return Built(path=str(dest), lock=read_lock(dest), manifest=read_manifest(dest), created=False)
        else:
            raise PackageError(f"{name}@{version} is already published in {registry} with other weights; publish a new version")

    try:
        record, dataset = _training(adapter_dir)
    except ContractError as e:
        raise PackageError(str(e)) from None
    manifest = make_manifest(adapter_dir, name=name, version=version, base_model=base_model, base_digest=base_digest,
                             gate=gate, intended_use=intended_use, created_at=time.time(), record=record,
                             dataset=dataset)
    stage = staging_dir(dest.parent, version)
    try:
        for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, *EXTRA_FILES):
            if (adapter_dir / f).is_file():
                shutil.copyfile(adapter_dir / f, stage / f)
        if gate is not None:
            write_json(stage / EVAL_REPORT, gate)
        write_json(stage / MANIFEST, manifest)
        (stage / CARD).write_text(render_card(manifest, gate=gate, record=record, dataset=dataset))
        paths = [p for p in sorted(stage.rglob("*")) if p.is_file()]
        files = {p.relative_to(stage).as_posix(): sha256_file(p) for p in paths}
        sizes = {p.relative_to(stage).as_posix(): p.stat().st_size for p in paths}
        lock = SpecialistLock(name=name, version=version, files=files, digest=lock_digest(files, sizes), sizes=sizes)
        write_json(stage / LOCK, lock)
        fsync_tree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if not move_into_place(stage, dest):
        # Someone published this version at the same moment.
        if read_lock(dest) is not None and _same_weights(dest, adapter_dir):
            return Built(path=str(dest), lock=read_lock(dest), manifest=read_manifest(dest), created=False)
        raise PackageError(f"{name}@{version} was published in {registry} by someone else meanwhile; publish a new version")
    return Built(path=str(dest), lock=lock, manifest=manifest, created=True)
