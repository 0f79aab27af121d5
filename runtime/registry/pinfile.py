"""Changing one pin in `tinygpt.project.json` without disturbing the rest of the file.

The file is edited as JSON (other keys, their order and values stay as written; defaults
are not filled in), validated as a whole `ProjectPins` before it is written, and written
atomically, so a runtime watching it sees either the old or the new pins, never half.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..contracts.base import ContractError
from ..contracts.io import atomic_write_bytes, decode_json
from ..contracts.project import ProjectPins


def set_pin(project_file: Path, name: str, version: str, sha256: str | None) -> ProjectPins:
    """Pin `name` to `version` (and `sha256`, or none) in `project_file`; returns the new pins."""
    project_file = Path(project_file)
    try:
        raw = json.loads(project_file.read_text())
    except (OSError, ValueError) as e:
        raise ContractError(str(project_file), f"cannot read it as JSON ({e})") from None
    pins = raw.get("specialists") if isinstance(raw, dict) else None
    pin = next((p for p in pins if isinstance(p, dict) and p.get("name") == name), None) if isinstance(pins, list) else None
    if pin is None:
        raise ContractError(str(project_file), f"{name!r} is not pinned in `specialists`")
    pin["version"] = version
    if sha256:
        pin["sha256"] = sha256
    else:
        pin.pop("sha256", None)
    data = (json.dumps(raw, indent=2) + "\n").encode()
    new = decode_json(data, ProjectPins, str(project_file))
    atomic_write_bytes(project_file, data)
    return new
