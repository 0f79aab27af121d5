"""Check that a file matches its contract; exit 0 when valid, 2 with the reason when not.

The kind is guessed from the file name (tinygpt.project.json → project) unless given."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = "tinygpt validate tinygpt.project.json\n  tinygpt validate --kind trajectory run-42.msgpack"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--kind", help="contract kind (see `tinygpt schema --help`); default: from the file name")


def guess_kind(path: Path) -> str | None:
    from tinygpt.runtime.contracts import KINDS, PROJECT_FILE

    if path.name == PROJECT_FILE:
        return "project"
    stem = path.name.split(".")[0]
    aliases = {"lock": "specialist-lock", "manifest": "specialist-manifest", "index": "registry-index"}
    stem = aliases.get(stem, stem)
    return stem if stem in KINDS else None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.runtime.contracts import KINDS, ContractError, read_any

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    status = 0
    for path in args.files:
        kind = args.kind or guess_kind(path)
        if kind not in KINDS:
            err.print(f"[red]error[/]: {path}: cannot tell the contract kind from the name; pass --kind (one of {', '.join(sorted(KINDS))})")
            status = 2
            continue
        try:
            read_any(path, KINDS[kind])
        except ContractError as e:
            err.print(f"[red]invalid[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            status = 2
            continue
        out.print(f"[green]valid[/] {path} ({kind})")
    return status
