"""`pins.lock.json`: what each project's pins resolved to, what they resolved to before, and problems.

One file in the TinyGPT home, one `ProjectState` per project file (by absolute path).
The runtime records a version once it serves it, `tinygpt pull` once it has verified it;
`tinygpt rollback` reads the history, `tinygpt status` the errors. Every update is a
read-modify-write under a file lock, written atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import paths
from ..contracts.base import ContractError
from ..contracts.io import read_json, write_json
from ..contracts.specialist import PinsLock, ProjectState, ResolvedVersion, SpecialistState
from ..filelock import FileLock

log = logging.getLogger("tinygpt.registry")

STATE_FILE = "pins.lock.json"
# Versions remembered per specialist for rollback.
HISTORY = 20


def state_path() -> Path:
    return paths.home() / STATE_FILE


def _key(project_file: Path) -> str:
    return str(Path(project_file).resolve())


def read_state() -> PinsLock:
    """The whole state (empty when there is none yet)."""
    path = state_path()
    if not path.is_file():
        return PinsLock()
    try:
        return read_json(path, PinsLock)
    except ContractError as e:
        # Serving must not depend on this bookkeeping: start over, say so.
        log.warning("ignoring %s (%s); it is rewritten on the next update", path, e)
        return PinsLock()


def project_state(project_file: Path) -> ProjectState:
    """The recorded state of one project file (empty when nothing was recorded)."""
    key = _key(project_file)
    return next((p for p in read_state().projects if p.project_file == key), ProjectState(project_file=key))


@contextmanager
def updating(project_file: Path) -> Iterator[ProjectState]:
    """Yield the project's state for changes; written back (atomically, locked) on exit."""
    key = _key(project_file)
    with FileLock(paths.home() / f".{STATE_FILE}.lock"):
        state = read_state()
        project = next((p for p in state.projects if p.project_file == key), None)
        if project is None:
            project = ProjectState(project_file=key)
            state.projects.append(project)
        yield project
        project.updated_at = time.time()
        state.projects.sort(key=lambda p: p.project_file)
        write_json(state_path(), state)


def _specialist(project: ProjectState, name: str) -> SpecialistState:
    found = project.specialist(name)
    if found is None:
        found = SpecialistState(name=name)
        project.specialists.append(found)
        project.specialists.sort(key=lambda s: s.name)
    return found


def record_current(project_file: Path, name: str, resolved: ResolvedVersion, *, project: str = "") -> None:
    """`name` now resolves to (or serves) `resolved`; the version it replaces goes to history."""
    with updating(project_file) as p:
        p.project = project or p.project
        s = _specialist(p, name)
        cur = s.current
        if cur is None or (cur.version, cur.digest) != (resolved.version, resolved.digest):
            if cur is not None:
                s.history = [*s.history, cur][-HISTORY:]
            s.current = resolved
        s.error, s.error_at = "", 0.0


def record_error(project_file: Path, name: str, message: str) -> None:
    with updating(project_file) as p:
        s = _specialist(p, name)
        s.error, s.error_at = message, time.time()


def record_project_error(project_file: Path, message: str) -> None:
    """The pin file could not be read (`message`), or could again (empty)."""
    with updating(project_file) as p:
        p.error = message


def record_unpinned(project_file: Path, name: str) -> None:
    """`name` is no longer pinned: its current version becomes history."""
    with updating(project_file) as p:
        s = p.specialist(name)
        if s is not None and s.current is not None:
            s.history = [*s.history, s.current][-HISTORY:]
            s.current = None


def rollback_target(project_file: Path, name: str) -> ResolvedVersion | None:
    """The version `name` resolved to before its current one (None when there is none)."""
    s = project_state(project_file).specialist(name)
    if s is None:
        return None
    current = s.current.version if s.current else None
    return next((h for h in reversed(s.history) if h.version != current), None)


def record_rollback(project_file: Path, name: str, target: ResolvedVersion) -> None:
    """Make `target` current and drop it (and what came after it) from history.

    So rolling back again goes further back (3 → 2 → 1), instead of toggling between
    the last two versions.
    """
    with updating(project_file) as p:
        s = _specialist(p, name)
        keep = len(s.history)
        for i in range(len(s.history) - 1, -1, -1):
            if s.history[i].version == target.version:
                keep = i
                break
        s.history = s.history[:keep]
        s.current = target
        s.error, s.error_at = "", 0.0
