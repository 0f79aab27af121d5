"""The specialists part of `tinygpt status`: what each project's pins resolved to, and problems.

Reads `pins.lock.json` only (no Redis, no MLX, no network), so it works whether or not a
runtime is up. Add `section` to `SECTIONS` in runtime/commands/status.py.
"""

from __future__ import annotations

import argparse
from datetime import datetime

import msgspec


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _project_name(project_file: str) -> str:
    """The project's name from its pin file (the state records it only once a pin resolved)."""
    from pathlib import Path

    from ..contracts.base import ContractError
    from ..project import load_project

    try:
        return load_project(Path(project_file)).name
    except (ContractError, OSError):
        return Path(project_file).parent.name


def section(console, args: argparse.Namespace) -> dict:
    """Print the specialists table (unless `console` is None) and return the state as data."""
    from .state import read_state, state_path

    state = read_state()
    if console is not None:
        from rich.markup import escape
        from rich.table import Table

        if not state.projects:
            console.print("no specialists resolved yet (`tinygpt pull`, or `tinygpt up` with pins)")
        for p in state.projects:
            title = f"specialists of {p.project or _project_name(p.project_file)} ({p.project_file})"
            if p.error:
                console.print(f"[red]{escape(p.project_file)}: rejected, the last good pins stay in force:[/] {escape(p.error)}")
            if not p.specialists:
                console.print(f"{escape(title)}: none pinned")
                continue
            t = Table(title=title)
            for col in ("specialist", "version", "digest", "from", "since", "earlier", "problem"):
                t.add_column(col, overflow="fold")
            for s in p.specialists:
                cur = s.current
                earlier = ", ".join(h.version for h in s.history[-3:]) or "-"
                problem = f"[red]{escape(s.error)}[/] ({_when(s.error_at)})" if s.error else "-"
                t.add_row(s.name, cur.version if cur else "-", cur.digest[:12] if cur else "-",
                          escape(cur.registry) if cur else "-", _when(cur.at) if cur else "-", earlier, problem)
            console.print(t)
    return {"specialists": {"state_file": str(state_path()), **msgspec.to_builtins(state)}}
