"""Pins to concrete versions: which registry entry each pin of a project means right now.

A pin names a specialist and a version: an exact version, or "*" for the newest
published one (published last; ties go to the higher version). With `sha256` set only
a package with exactly that lock digest is accepted. Registries are searched in the
order the project lists them: an exact version is taken from the first registry that has
it, "*" from whichever has the newest. Versions trained on another base model than the
runtime's are never chosen for "*", and refused when pinned exactly.

"*" takes only a version whose eval gate passed for exactly its weights: its package's
eval report says "pass" and names the adapter digest its lock's files hash to (checked
here, at resolve time, from the package itself). A version published with `--no-gate`,
or one whose report is for other weights, is reachable only by pinning it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contracts.project import ProjectPins, SpecialistPin
from ..contracts.specialist import RegistryEntry, RegistryIndex
from .errors import IntegrityError, NotFound, PackageError, RegistryError
from .fetch import Source, gate_problem_of, source_for
from .files import version_key
from .index import newest


@dataclass
class Registry:
    """A configured registry and its index as read just now (`error` when it could not be)."""

    label: str
    source: Source | None
    index: RegistryIndex | None
    error: str = ""


@dataclass
class Resolved:
    pin: SpecialistPin
    entry: RegistryEntry
    source: Source


def describe(pin: SpecialistPin) -> str:
    text = f"{pin.name}@{pin.version}" if pin.version != "*" else f"{pin.name} (newest)"
    return text + (f" with sha256 {pin.sha256[:12]}" if pin.sha256 else "")


def open_registries(pins: ProjectPins, project_dir: Path, *, timeout: float = 30.0) -> list[Registry]:
    """Every registry of the project with its index; one that is down carries its error."""
    out = []
    for spec in pins.registries:
        try:
            source = source_for(spec, project_dir, timeout=timeout, allow_insecure_http=pins.allow_insecure_http)
        except RegistryError as e:
            out.append(Registry(spec, None, None, str(e)))
            continue
        try:
            out.append(Registry(source.label, source, source.index()))
        except RegistryError as e:
            out.append(Registry(source.label, source, None, str(e)))
    return out


def resolve_pin(pin: SpecialistPin, registries: list[Registry], *, base_digest: str | None = None) -> Resolved:
    """The entry `pin` means, or NotFound / IntegrityError / PackageError saying why none."""
    found = [(r, e) for r in registries if r.index for e in r.index.specialists if e.name == pin.name]
    named = found
    if pin.version != "*":
        found = [(r, e) for r, e in found if e.version == pin.version]
    if pin.sha256 and found:
        matching = [(r, e) for r, e in found if e.digest == pin.sha256]
        if not matching:
            digests = ", ".join(sorted({f"{e.version}: {e.digest[:12]}" for _, e in found}))
            raise IntegrityError(f"{describe(pin)}: no published package has that digest ({digests}): refused")
        found = matching
    if base_digest and found:
        fitting = [(r, e) for r, e in found if not e.base_digest or e.base_digest == base_digest]
        if not fitting:
            raise PackageError(
                f"{describe(pin)}: every matching version was trained on another base model "
                f"(this runtime's base has digest {base_digest[:12]})"
            )
        found = fitting
    if not found:
        searched = ", ".join(r.label for r in registries) or "none configured"
        have = sorted({e.version for _, e in named}, key=version_key)
        msg = f"{describe(pin)} is in no registry (searched: {searched})"
        if have:
            msg += f"; published versions: {', '.join(have)}"
        down = [r.error for r in registries if r.index is None]
        if down:
            msg += "; unavailable: " + "; ".join(down)
        raise NotFound(msg)
    if pin.version != "*":
        reg, entry = found[0]
        return Resolved(pin=pin, entry=entry, source=reg.source)
    refused = []
    while found:
        best = newest([e for _, e in found])
        reg, entry = next((r, e) for r, e in found if e is best)
        problem = gate_problem_of(reg.source, entry)
        if problem is None:
            return Resolved(pin=pin, entry=entry, source=reg.source)
        refused.append(f"{entry.version}: {problem}")
        found = [(r, e) for r, e in found if e is not best]
    raise NotFound(f"{describe(pin)}: no published version passed the eval gate for its weights "
                   f"({'; '.join(refused)}); pin one exactly to serve it anyway")
