"""Print the JSON Schema of a contract, e.g. of tinygpt.project.json for your editor.

Point your editor's JSON Schema setting for `tinygpt.project.json` at the output to
get completion and inline errors."""

from __future__ import annotations

import argparse

EXAMPLE = "tinygpt schema project > tinygpt.project.schema.json"


def configure(parser: argparse.ArgumentParser) -> None:
    from tinygpt.runtime.contracts import KINDS

    parser.add_argument("kind", choices=sorted(KINDS), metavar="KIND", help=f"one of: {', '.join(sorted(KINDS))}")


def run(args: argparse.Namespace) -> int:
    import sys

    import msgspec

    from tinygpt.runtime.contracts import KINDS

    schema = msgspec.json.schema(KINDS[args.kind])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(schema), indent=2).decode() + "\n")
    return 0
