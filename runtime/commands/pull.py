"""Pull the specialists pinned in tinygpt.project.json: resolve each pin against the
project's registries (directories, file:// or http(s):// URLs with an index.json),
download into the cache, verify the sha256 of every file against the package's lock
(and the pin's sha256), and record what was resolved in <tinygpt home>/pins.lock.json.

A package whose files do not match is refused and not cached; the previous verified
version stays where it was, and a running runtime keeps serving it. Exit 1 when any
pin could not be pulled."""

from __future__ import annotations

import argparse

EXAMPLE = "tinygpt pull\n  tinygpt pull --project path/to/tinygpt.project.json --json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="project pin file (default: the nearest tinygpt.project.json)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait on an HTTP registry (default: 30)")
    parser.add_argument("--json", action="store_true", help="print the outcome per pin as JSON")


def cached_base_digest(model: str) -> str | None:
    """The base model's digest when it is on disk already (never pulls it), else None."""
    from pathlib import Path

    from tinygpt.runtime.models import cache
    from tinygpt.runtime.models.manifest import read_manifest

    path = Path(model).expanduser()
    if not path.is_dir():
        try:
            path = cache.cached(model)
        except ValueError:
            return None
    manifest = read_manifest(path) if path is not None else None
    return manifest.digest if manifest is not None else None


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import msgspec
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tinygpt.runtime.contracts import ContractError
    from tinygpt.runtime.project import find_project, load_project
    from tinygpt.runtime.registry.pins import pull_pins, record_outcomes

    project_file = Path(args.project) if args.project else find_project()
    try:
        if project_file is None:
            raise ContractError("tinygpt.project.json", f"not found in {Path.cwd()} or any parent directory; pass --project")
        pins = load_project(project_file)
    except ContractError as e:
        print(f"tinygpt pull: {e}", file=sys.stderr)
        return 2
    outcomes = pull_pins(pins, project_file, base_digest=cached_base_digest(pins.base_model), timeout=args.timeout)
    record_outcomes(project_file, outcomes, project=pins.name)
    failed = [o for o in outcomes if o.error]
    if args.json:
        print(msgspec.json.encode(outcomes).decode())
        return 1 if failed else 0
    console = Console(soft_wrap=True)
    if not outcomes:
        console.print(f"{project_file}: no specialists pinned")
        return 0
    t = Table(title=f"specialists of {pins.name}")
    for col in ("pin", "version", "digest", "from", "status"):
        t.add_column(col, overflow="fold")
    for o in outcomes:
        if not o.error:
            status = "downloaded, verified" if o.downloaded else "cached, verified"
        elif o.fallback:
            status = f"[yellow]kept the last good version[/]: {escape(o.error)}"
        else:
            status = f"[red]failed[/]: {escape(o.error)}"
        t.add_row(escape(o.wanted), o.version or "-", o.digest[:12] or "-", escape(o.registry) or "-", status)
    console.print(t)
    return 1 if failed else 0
