"""What the gate measures: the candidate (base model + adapter) and the baseline it must not
fall behind, found from the project's pins, its registries and the recorded baseline.

The candidate is `--candidate DIR` (an mlx-lm adapter directory), else the pinned version
of `--specialist NAME`, else the only pinned specialist, else the bare base model.
Its *subject* (the specialist's name, or "@base") picks the pin and the recorded baseline.

The baseline, unless `--baseline` names one (base | pinned | recorded | none | DIR | NAME[@VERSION]):

    gate.baseline = "pinned" (default)          gate.baseline = "base"     gate.baseline = "none"
      1. the pinned version of the subject,        the base model            no baseline
         when it is not the candidate itself
      2. the recorded baseline of the subject
         (`tinygpt eval-gate --update-baseline`)
      3. the base model, when the candidate has an adapter
      4. none: absolute thresholds decide

The recorded baseline lives in `tinygpt.eval-baseline.json` next to the project file,
with the reports it was accepted with: suites whose cache key still matches reuse them
even on a machine that never ran that baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tinygpt.runtime.contracts.base import ContractError
from tinygpt.runtime.contracts.evals import BaselineFile, BaselineRecord, EvalReport
from tinygpt.runtime.contracts.io import read_json, write_json
from tinygpt.runtime.contracts.project import ProjectPins
from tinygpt.runtime.contracts.specialist import RegistryIndex, SpecialistLock

from .cache import DigestMemo, model_digest
from .rows import GateInputError

BASELINE_FILE = "tinygpt.eval-baseline.json"
BASE_SUBJECT = "@base"
BASELINE_MODES = ("pinned", "base", "none")


@dataclass(frozen=True)
class Target:
    """One model to evaluate: a base model, optionally with an adapter."""

    describe: str
    model: str  # as the project names it (a cached name or a path)
    model_dir: Path | None
    model_digest: str
    adapter: str | None = None  # the adapter directory as recorded (relative to the project when inside it)
    adapter_dir: Path | None = None
    adapter_digest: str | None = None
    # False for a recorded baseline whose files are gone: only its recorded reports count.
    runnable: bool = True

    @property
    def identity(self) -> tuple[str, str | None]:
        return (self.model_digest, self.adapter_digest)


@dataclass
class Context:
    project: ProjectPins
    project_file: Path
    memo: DigestMemo
    _base: Target | None = None

    @property
    def project_dir(self) -> Path:
        return self.project_file.parent

    def base(self) -> Target:
        """The project's base model (resolved once)."""
        if self._base is None:
            model_dir = _model_dir(self.project.base_model, self.project_dir)
            digest = model_digest(model_dir, self.memo)
            self._base = Target(f"base model {self.project.base_model}", self.project.base_model, model_dir, digest)
        return self._base

    def relative(self, path: Path) -> str:
        path = path.resolve()
        try:
            return path.relative_to(self.project_dir.resolve()).as_posix()
        except ValueError:
            return str(path)


def _model_dir(model: str, project_dir: Path) -> Path:
    from tinygpt.runtime.models import resolve_model

    local = project_dir / model
    try:
        return resolve_model(local if local.is_dir() else model)
    except ValueError as e:  # ModelNotFound, or not an mlx-lm model directory
        raise GateInputError(f"base model: {e}") from None


def adapter_target(ctx: Context, adapter_dir: Path, describe: str) -> Target:
    """The base model with the adapter in `adapter_dir` (checked, hashed; no arrays loaded)."""
    from tinygpt.runtime.serving.adapters import read_adapter
    from tinygpt.runtime.serving.protocol import ApiError

    base = ctx.base()
    try:
        info = read_adapter(adapter_dir, "candidate", None, base.model_digest)
    except ApiError as e:
        raise GateInputError(f"{describe}: {e.message}") from None
    path = Path(info.path)
    return Target(describe, base.model, base.model_dir, base.model_digest, ctx.relative(path), path, info.digest)


# ---------------------------------------------------------------- registries


def _registry_dirs(ctx: Context) -> list[Path]:
    dirs = []
    for reg in ctx.project.registries:
        if reg.startswith(("http://", "https://")):
            continue  # remote registries are the swapper's business; the gate reads local copies
        dirs.append(Path(reg[len("file://"):]) if reg.startswith("file://") else ctx.project_dir / reg)
    return dirs


def find_package(ctx: Context, name: str, version: str = "*", sha256: str | None = None) -> tuple[Path, str]:
    """(package directory, version) of a published specialist in the project's registries."""
    found: list[tuple[float, str, Path]] = []
    for root in _registry_dirs(ctx):
        index = root / "index.json"
        if index.is_file():
            try:
                entries = read_json(index, RegistryIndex).specialists
            except ContractError as e:
                raise GateInputError(str(e)) from None
            found += [(e.created_at, e.version, root / e.path) for e in entries if e.name == name]
        else:
            found += [(0.0, lock.parent.name, lock.parent) for lock in root.glob(f"{name}/*/lock.json")]
    found = [f for f in found if (f[2] / "lock.json").is_file() and (version == "*" or f[1] == version)]
    if version == "*":
        # What a "*" pin serves: only versions whose gate passed for exactly their weights.
        found = [f for f in found if _gated(f[2])]
    if not found:
        where = ", ".join(str(d) for d in _registry_dirs(ctx)) or "no local registries"
        raise LookupError(f"{name}@{version} is not in the registries ({where})")
    _, ver, path = max(found, key=lambda f: (f[0], f[1]))
    if sha256:
        lock = read_json(path / "lock.json", SpecialistLock)
        if lock.digest != sha256:
            raise GateInputError(f"{name}@{ver} in {path} has digest {lock.digest[:12]}, but the pin requires {sha256[:12]}")
    return path, ver


def _gated(package: Path) -> bool:
    from tinygpt.runtime.contracts.evals import GateResult
    from tinygpt.runtime.registry.package import EVAL_REPORT, gate_problem

    try:
        lock = read_json(package / "lock.json", SpecialistLock)
        report = read_json(package / EVAL_REPORT, GateResult) if (package / EVAL_REPORT).is_file() else None
    except ContractError:
        return False
    return gate_problem(lock, report) is None


def _pinned(ctx: Context, subject: str) -> Target:
    pin = ctx.project.pin(subject)
    if pin is None:
        raise LookupError(f"{subject} is not pinned in {ctx.project_file.name}")
    path, version = find_package(ctx, pin.name, pin.version, pin.sha256)
    return adapter_target(ctx, path, f"pinned {pin.name}@{version}")


# ---------------------------------------------------------------- the recorded baseline


def baseline_file(ctx: Context) -> Path:
    return ctx.project_dir / BASELINE_FILE


def read_record(ctx: Context, subject: str) -> BaselineRecord | None:
    path = baseline_file(ctx)
    if not path.is_file():
        return None
    try:
        records = read_json(path, BaselineFile).baselines
    except ContractError as e:
        raise GateInputError(str(e)) from None
    return next((r for r in records if r.subject == subject), None)


def write_record(ctx: Context, subject: str, report: EvalReport) -> Path:
    """Record `report` as the baseline of `subject` (other subjects' records are kept)."""
    path = baseline_file(ctx)
    records = read_json(path, BaselineFile).baselines if path.is_file() else []
    records = [r for r in records if r.subject != subject]
    records.append(BaselineRecord(subject=subject, report=report, recorded_at=time.time()))
    write_json(path, BaselineFile(baselines=sorted(records, key=lambda r: r.subject)))
    return path


def recorded_target(ctx: Context, record: BaselineRecord) -> Target:
    """The recorded baseline as a target; not runnable when its model or adapter is gone/changed."""
    rep = record.report
    describe = f"recorded baseline of {record.subject}" + (f" ({rep.adapter})" if rep.adapter else "")
    model_dir = adapter_dir = None
    try:
        model_dir = _model_dir(rep.model, ctx.project_dir)
        ok = model_digest(model_dir, ctx.memo) == rep.model_digest
        if ok and rep.adapter:
            adapter_dir = (ctx.project_dir / rep.adapter).resolve()
            ok = adapter_target(ctx, adapter_dir, describe).adapter_digest == rep.adapter_digest
    except GateInputError:
        ok = False
    return Target(describe, rep.model, model_dir, rep.model_digest, rep.adapter, adapter_dir, rep.adapter_digest, runnable=ok)


# ---------------------------------------------------------------- resolution


def resolve_candidate(ctx: Context, candidate: Path | None, specialist: str | None) -> tuple[str, Target]:
    """(subject, candidate target)."""
    if candidate is not None:
        if not candidate.is_dir():
            raise GateInputError(f"candidate adapter directory {candidate} not found")
        subject = specialist or _manifest_name(candidate) or candidate.resolve().name
        return subject, adapter_target(ctx, candidate, f"candidate {ctx.relative(candidate)}")
    if specialist is None:
        pins = ctx.project.specialists
        if len(pins) > 1:
            names = ", ".join(p.name for p in pins)
            raise GateInputError(f"the project pins several specialists ({names}); choose one with --specialist")
        if not pins:
            return BASE_SUBJECT, ctx.base()
        specialist = pins[0].name
    try:
        return specialist, _pinned(ctx, specialist)
    except LookupError as e:
        raise GateInputError(f"candidate: {e}") from None


def _manifest_name(path: Path) -> str | None:
    from tinygpt.runtime.contracts.specialist import SpecialistManifest

    if (path / "manifest.json").is_file():
        try:
            return read_json(path / "manifest.json", SpecialistManifest).name
        except ContractError as e:
            raise GateInputError(str(e)) from None
    return None


def resolve_baseline(
    ctx: Context, subject: str, candidate: Target, explicit: str | None = None
) -> tuple[Target | None, str, BaselineRecord | None]:
    """(baseline target or None, why this one, the record when it is the recorded baseline)."""
    mode = explicit or ctx.project.gate.baseline
    if mode not in BASELINE_MODES + ("recorded",) and explicit is None:
        raise GateInputError(f"gate.baseline must be one of {', '.join(BASELINE_MODES)}, got {mode!r}")
    has_adapter = candidate.adapter_digest is not None
    base_or_none = (ctx.base(), "the base model", None) if has_adapter else (None, "none: the candidate is the base model", None)
    if mode == "none":
        return None, "none: gate.baseline is \"none\"", None
    if mode == "base":
        return base_or_none
    if mode == "recorded":
        record = read_record(ctx, subject)
        if record is None:
            raise GateInputError(f"no recorded baseline for {subject} in {baseline_file(ctx)}")
        return recorded_target(ctx, record), f"recorded baseline ({_when(record)})", record
    if mode != "pinned":  # an adapter directory or NAME[@VERSION]
        path = Path(mode) if Path(mode).is_dir() else ctx.project_dir / mode
        if path.is_dir():
            return adapter_target(ctx, path, f"baseline {ctx.relative(path)}"), f"adapter {ctx.relative(path)}", None
        name, _, version = mode.partition("@")
        try:
            pkg, ver = find_package(ctx, name, version or "*")
        except LookupError as e:
            raise GateInputError(f"--baseline {mode}: not a directory, and {e}") from None
        return adapter_target(ctx, pkg, f"{name}@{ver}"), f"{name}@{ver}", None
    notes = []
    if ctx.project.pin(subject) is not None:
        try:
            pinned = _pinned(ctx, subject)
            if pinned.identity != candidate.identity:
                return pinned, pinned.describe, None
        except LookupError as e:
            notes.append(f"pinned version unavailable: {e}")
    record = read_record(ctx, subject)
    if record is not None:
        return recorded_target(ctx, record), f"recorded baseline ({_when(record)})", record
    target, source, _ = base_or_none
    if target is None and not notes:
        source += "; record one with --update-baseline"
    return target, "; ".join([source, *notes]), None


def _when(record: BaselineRecord) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.recorded_at)) if record.recorded_at else "?"
    what = record.report.adapter or record.report.model
    return f"{what}, recorded {stamp}"
