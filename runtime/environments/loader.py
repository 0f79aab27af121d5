"""Finding an environment: its entry point comes from the project file, never from a payload.

`load(project_file, name)` reads `tinygpt.project.json`, finds `environments[name].entry`
(`package.module:ClassName`), imports the module with the project's folder on the
import path (a user's module next to their project file just works), instantiates the
class and checks its shape. Everything that can go wrong is an `EnvironmentBroken`
naming the environment and the cause.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from tinygpt.runtime.contracts.project import ProjectPins

from .interface import Environment

BUNDLED: dict[str, str] = {
    "fileops": "tinygpt.runtime.environments.bundled.fileops:FileOps",
    "shop": "tinygpt.runtime.environments.bundled.shop:Shop",
}


class EnvironmentBroken(ValueError):
    """An environment that cannot be used: not declared, not importable, or a method that
    raised or returned something out of contract. Retrying cannot help."""


def entry_for(pins: ProjectPins, name: str) -> str:
    """The entry point of `name`: the project's declaration, else a bundled environment."""
    ref = pins.environment(name)
    if ref is not None:
        return ref.entry
    if name in BUNDLED:
        return BUNDLED[name]
    declared = ", ".join(e.name for e in pins.environments) or "none"
    raise EnvironmentBroken(f"no environment {name!r} in the project {pins.name!r} (declared: {declared}; "
                            f"bundled: {', '.join(BUNDLED)})")


def import_entry(entry: str, project_dir: Path | None = None) -> Any:
    """The object `package.module:Name` names, importing with `project_dir` on the path."""
    module_name, _, attr = entry.partition(":")
    added = False
    if project_dir is not None and str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
        added = True
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module's, named below
        raise EnvironmentBroken(f"cannot import {module_name!r} (entry {entry!r}): {type(e).__name__}: {e}") from e
    finally:
        if added:
            sys.path.remove(str(project_dir))
    try:
        return getattr(module, attr)
    except AttributeError:
        raise EnvironmentBroken(f"module {module_name!r} has no {attr!r} (entry {entry!r})") from None


def instantiate(entry: str, project_dir: Path | None = None) -> Environment:
    """Import and construct the environment, then check the parts the runner relies on."""
    cls = import_entry(entry, project_dir)
    try:
        env = cls() if isinstance(cls, type) else cls
    except Exception as e:  # noqa: BLE001
        raise EnvironmentBroken(f"{entry}: constructing it raised {type(e).__name__}: {e}") from e
    check_shape(env, entry)
    return env


def check_shape(env: Any, entry: str) -> None:
    missing = [m for m in ("tasks", "reset", "step", "score") if not callable(getattr(env, m, None))]
    if missing:
        raise EnvironmentBroken(f"{entry}: missing method(s) {', '.join(missing)} (see tinygpt.runtime.environments.Environment)")
    tools = getattr(env, "tools", None)
    if not isinstance(tools, list) or not tools:
        raise EnvironmentBroken(f"{entry}: `tools` must be a non-empty list of OpenAI function tools")
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not (isinstance(t, dict) and t.get("type") == "function" and isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            raise EnvironmentBroken(f"{entry}: tools[{i}] is not {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
        names.append(fn["name"])
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EnvironmentBroken(f"{entry}: tool names repeat: {', '.join(dupes)}")
    for attr in ("max_turns", "max_tokens"):
        value = getattr(env, attr, None)
        if not isinstance(value, int) or value < 1:
            raise EnvironmentBroken(f"{entry}: `{attr}` must be a positive int, got {value!r}")


def load(project_file: Path, name: str, pins: ProjectPins | None = None) -> Environment:
    """The environment `name` declared in `project_file` (or bundled), ready to run."""
    from tinygpt.runtime.project import load_project

    project_file = Path(project_file).resolve()
    pins = pins or load_project(project_file)
    return instantiate(entry_for(pins, name), project_file.parent)
