"""Keep a running runtime serving what the project's pins say: pull, verify, hot-swap.

`Swapper.sync()` reads `tinygpt.project.json`, pulls every pin (pins.py) and, for each
specialist whose resolved version differs from the one being served, calls
`Runtime.load_adapter`, the engine's atomic swap: new requests get the new version,
requests in flight finish on the old one, the base weights are never reloaded.

Nothing here ever takes a working specialist away on bad input. A pin file that does not
parse is rejected (logged, recorded for `tinygpt status`) and the last good pins stay in
force; a pin that cannot be pulled or loaded keeps its current version serving. Only a
specialist removed from the pins is unloaded, and only one this swapper loaded itself
(adapters loaded by hand, through the admin API or `--adapter`, are left alone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from ..contracts.base import ContractError
from ..contracts.project import ProjectPins
from ..contracts.specialist import PublishedNotice
from ..models.adapter_format import AdapterFormatError
from ..project import load_project
from .notify import pinned_by
from .pins import PinOutcome, pull_pins
from .state import record_current, record_error, record_project_error, record_unpinned

log = logging.getLogger("tinygpt.registry")


class SyncReport(msgspec.Struct, kw_only=True):
    reason: str
    # The pin file's problem when it was rejected (nothing else was done then).
    rejected: str = ""
    # "name@version" made current, kept as it was, and unloaded.
    loaded: list[str] = []
    kept: list[str] = []
    unloaded: list[str] = []
    # name -> what went wrong (its current version, if any, keeps serving).
    errors: dict[str, str] = {}
    swap_seconds: dict[str, float] = {}
    seconds: float = 0.0


class Swapper:
    """Applies a project's pins to a `Runtime` (anything with load_adapter / unload_adapter /
    adapters_state / registry.base_digest). Thread-safe: syncs run one at a time."""

    def __init__(self, runtime, project_file: Path, *, say: Callable[[str], None] | None = None, timeout: float = 30.0):
        self.runtime = runtime
        self.project_file = Path(project_file).resolve()
        self.timeout = timeout
        self._say = say or log.info
        self._lock = threading.Lock()
        # The last pins that parsed: what stays in force while the file is broken.
        self.pins: ProjectPins | None = None
        self.managed: set[str] = set()
        self.last: SyncReport | None = None

    def serving(self) -> dict[str, tuple[str, str]]:
        """name -> (version, digest) that new requests get now."""
        state = self.runtime.adapters_state()
        by_key = {f"{v['name']}@{v['version']}": (v["version"], v["digest"]) for v in state["versions"]}
        return {name: by_key[key] for name, key in state["current"].items() if key in by_key}

    def _describe_serving(self, name: str | None = None) -> str:
        now = self.serving()
        if name is not None:
            return f"still serving {name}@{now[name][0]}" if name in now else f"{name} is not being served"
        managed = sorted(f"{n}@{v}" for n, (v, _) in now.items() if n in self.managed)
        return "still serving " + (", ".join(managed) if managed else "no pinned specialists")

    def sync(self, reason: str = "sync", *, only: set[str] | None = None) -> SyncReport:
        """Bring the runtime in line with the pin file (just the names in `only`, if given)."""
        with self._lock:
            start = time.perf_counter()
            report = self._sync(reason, only)
            report.seconds = time.perf_counter() - start
            self.last = report
            return report

    def _sync(self, reason: str, only: set[str] | None) -> SyncReport:
        report = SyncReport(reason=reason)
        try:
            pins = load_project(self.project_file)
        except ContractError as e:
            report.rejected = str(e)
            self._say(f"Specialists: rejected the pin file ({reason}): {e}; {self._describe_serving()}")
            record_project_error(self.project_file, str(e))
            return report
        record_project_error(self.project_file, "")
        base = self.runtime.registry.base_digest
        outcomes = pull_pins(pins, self.project_file, base_digest=base, timeout=self.timeout, only=only,
                             serving=self.serving())
        for o in outcomes:
            self._apply(o, pins.name, report)
        if only is None:
            for name in sorted(self.managed - {p.name for p in pins.specialists}):
                self._unpin(name, report)
        self.pins = pins
        return report

    def _apply(self, o: PinOutcome, project: str, report: SyncReport) -> None:
        if not o.usable:
            report.errors[o.name] = o.error
            record_error(self.project_file, o.name, o.error)
            self._say(f"Specialists: {o.wanted}: {o.error}; {self._describe_serving(o.name)}")
            return
        have = self.serving().get(o.name)
        key = f"{o.name}@{o.version}"
        if have == (o.version, o.digest):
            self.managed.add(o.name)
            report.kept.append(key)
        else:
            try:
                result = self.runtime.load_adapter(o.name, o.path, o.version)
            except (AdapterFormatError, ValueError, OSError) as e:  # serving's refusals are AdapterFormatErrors too
                message = getattr(e, "message", None) or str(e)
                report.errors[o.name] = message
                record_error(self.project_file, o.name, f"loading {key}: {message}")
                self._say(f"Specialists: loading {key} failed: {message}; {self._describe_serving(o.name)}")
                return
            self.managed.add(o.name)
            report.loaded.append(key)
            report.swap_seconds[key] = result["seconds"]
            verb = f"swapped {o.name} {have[0]} -> {o.version}" if have else f"loaded {key}"
            self._say(f"Specialists: {verb} ({o.digest[:12]}) in {1e3 * result['seconds']:.0f} ms")
        record_current(self.project_file, o.name, o.resolved(), project=project)
        if o.error:
            # Serving the last good copy; the newer pick failed and the reason stays on record.
            report.errors[o.name] = o.error
            record_error(self.project_file, o.name, o.error)
            self._say(f"Specialists: {o.wanted}: {o.error}; serving the last good {key}")

    def _unpin(self, name: str, report: SyncReport) -> None:
        try:
            keys = self.runtime.unload_adapter(name)["unloaded"]
        except AdapterFormatError:  # serving's 404 for a name it no longer serves
            keys = []  # already gone (unloaded through the admin API)
        self.managed.discard(name)
        record_unpinned(self.project_file, name)
        report.unloaded += keys
        self._say(f"Specialists: {name} is no longer pinned; stopped serving it")

    def on_notice(self, notice: PublishedNotice) -> SyncReport | None:
        """A version was published: pull and swap if the pins accept it; None when they do not."""
        pins = self.pins
        if pins is None:
            try:
                pins = load_project(self.project_file)
            except ContractError:
                return None
        if not pinned_by(pins, notice):
            log.debug("ignoring %s@%s: not accepted by the pins", notice.name, notice.version)
            return None
        base = self.runtime.registry.base_digest
        if notice.base_digest and base and notice.base_digest != base:
            self._say(f"Specialists: ignoring {notice.name}@{notice.version}: trained on another base model")
            return None
        report = self.sync(f"{notice.name}@{notice.version} published", only={notice.name})
        now = self.serving().get(notice.name)
        if now is None or now[0] != notice.version:
            why = report.errors.get(notice.name) or "the project's registries do not list it as the version its pin means"
            self._say(f"Specialists: {notice.name}@{notice.version} was published, not swapped in: {why}")
        return report
