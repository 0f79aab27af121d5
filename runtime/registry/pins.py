"""Pull what a project's pins name: resolve, download, verify; fall back to the last good copy.

    pull_pins(pins, project_file) -> [PinOutcome, ...]     one per pin, never raises for a pin

A pin that cannot be pulled right now (a registry down, a tampered download, a version
no registry has) gets an `error`. When the version it resolved to last time
(`pins.lock.json`), or the exact version it names, is still intact in the cache and the
pin still accepts it, the outcome also names that copy (`fallback`): a runtime keeps
serving, or starts with, the last good version instead of nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from ..contracts.project import ProjectPins, SpecialistPin
from ..contracts.specialist import ResolvedVersion
from .errors import RegistryError
from .fetch import cached_dir, cached_lock, pull
from .resolve import describe, open_registries, resolve_pin
from .state import project_state, record_current, record_error

log = logging.getLogger("tinygpt.registry")


class PinOutcome(msgspec.Struct, kw_only=True):
    name: str
    # The pin as written: "sql@3", "sql (newest)".
    wanted: str
    version: str = ""
    digest: str = ""
    path: str = ""
    registry: str = ""
    downloaded: bool = False
    # The pin could not be pulled (`error`), and `version` is the last good copy instead.
    fallback: bool = False
    error: str = ""

    @property
    def usable(self) -> bool:
        return bool(self.path)

    def resolved(self) -> ResolvedVersion:
        return ResolvedVersion(version=self.version, digest=self.digest, registry=self.registry, path=self.path, at=time.time())


def accepts(pin: SpecialistPin, version: str, digest: str) -> bool:
    """Whether `pin` allows `version` with lock digest `digest`."""
    return (pin.version in ("*", version)) and (pin.sha256 is None or pin.sha256 == digest)


def _fallback(pin: SpecialistPin, project_file: Path, error: str) -> PinOutcome:
    out = PinOutcome(name=pin.name, wanted=describe(pin), error=error)
    s = project_state(project_file).specialist(pin.name)
    candidates = []
    if s is not None and s.current is not None:
        candidates.append((s.current.version, s.current.registry))
    if pin.version != "*":
        candidates.append((pin.version, ""))
    for version, registry in candidates:
        lock = cached_lock(pin.name, version)
        if lock is not None and accepts(pin, version, lock.digest):
            path = str(cached_dir(pin.name, version))
            return msgspec.structs.replace(out, version=version, digest=lock.digest, path=path, registry=registry, fallback=True)
    return out


def pull_pins(pins: ProjectPins, project_file: Path, *, base_digest: str | None = None, timeout: float = 30.0,
              only: set[str] | None = None, serving: dict[str, tuple[str, str]] | None = None) -> list[PinOutcome]:
    """Resolve and pull every pin (or those named in `only`); see the module doc.

    `serving` (name -> (version, digest) a runtime serves) skips the pull of a pin that
    still resolves to exactly what is served: its weights are in memory already, and
    re-hashing every kept package on every pin file change would be wasted work.
    """
    project_file = Path(project_file)
    todo = [p for p in pins.specialists if only is None or p.name in only]
    if not todo:
        return []
    registries = open_registries(pins, project_file.parent, timeout=timeout)
    outcomes = []
    for pin in todo:
        try:
            r = resolve_pin(pin, registries, base_digest=base_digest)
            if (serving or {}).get(pin.name) == (r.entry.version, r.entry.digest):
                outcomes.append(PinOutcome(name=pin.name, wanted=describe(pin), version=r.entry.version,
                                           digest=r.entry.digest, path=str(cached_dir(pin.name, r.entry.version)),
                                           registry=r.source.label))
                continue
            got = pull(r.source, r.entry, pin_sha256=pin.sha256)
        except (RegistryError, OSError) as e:
            # OSError: the cache's disk (full, read-only); the registry's own errors are RegistryErrors.
            log.warning("%s: %s", describe(pin), e)
            outcomes.append(_fallback(pin, project_file, str(e)))
            continue
        outcomes.append(PinOutcome(
            name=pin.name, wanted=describe(pin), version=r.entry.version, digest=got.lock.digest, path=got.path,
            registry=r.source.label, downloaded=got.downloaded,
        ))
    return outcomes


def record_outcomes(project_file: Path, outcomes: list[PinOutcome], *, project: str = "") -> None:
    """Write what `tinygpt pull` verified: the resolved versions, and the errors."""
    for o in outcomes:
        if o.usable and not o.fallback:
            record_current(project_file, o.name, o.resolved(), project=project)
        if o.error:
            record_error(project_file, o.name, o.error)
