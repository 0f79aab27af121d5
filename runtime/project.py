"""Finding and loading `tinygpt.project.json`."""

from __future__ import annotations

from pathlib import Path

from .contracts import PROJECT_FILE, ProjectPins, read_json


def find_project(start: Path | None = None) -> Path | None:
    """The nearest `tinygpt.project.json` at or above `start` (default: the cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def load_project(path: Path | None = None) -> ProjectPins:
    """Load the pin file; raises ContractError naming the file and field on bad input."""
    path = path or find_project()
    if path is None:
        from .contracts import ContractError

        raise ContractError(PROJECT_FILE, f"not found in {Path.cwd()} or any parent directory")
    return read_json(path, ProjectPins)


def recorded_base_name(base_model: str, project_file: Path | None = None) -> str:
    """The base model's name as the runtime records it in trajectories: a cached model's
    name, or a model directory's folder name (serving/app.py names the base the same way)."""
    path = Path(base_model).expanduser()
    if project_file is not None and not path.is_absolute():
        path = Path(project_file).parent / path
    if "/" in base_model or path.is_dir():
        return path.resolve().name
    return base_model
