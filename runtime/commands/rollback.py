"""Go back to the previous version of a pinned specialist.

The previous version is the one its pin resolved to before the current one (recorded
in <tinygpt home>/pins.lock.json by the runtime and `tinygpt pull`); --to picks any
published version instead. The target is pulled and verified first, then the pin in
tinygpt.project.json is set to exactly that version and digest, so a running
`tinygpt up` swaps it in at once (requests in flight finish on the current version) and
the next start serves it too. Rolling back again goes further back. Set the pin's
version back to "*" to follow new versions again."""

from __future__ import annotations

import argparse

EXAMPLE = "tinygpt rollback mail\n  tinygpt rollback mail --to 2"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the pinned specialist")
    parser.add_argument("--to", metavar="VERSION", help="roll back to this version (default: the previous one)")
    parser.add_argument("--project", help="project pin file (default: the nearest tinygpt.project.json)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait on an HTTP registry (default: 30)")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import msgspec

    from tinygpt.runtime.contracts import ContractError, SpecialistPin
    from tinygpt.runtime.project import find_project, load_project
    from tinygpt.runtime.registry import state
    from tinygpt.runtime.registry.pinfile import set_pin
    from tinygpt.runtime.registry.pins import pull_pins

    def fail(message: str, code: int = 1) -> int:
        print(f"tinygpt rollback: {message}", file=sys.stderr)
        return code

    project_file = Path(args.project) if args.project else find_project()
    if project_file is None:
        return fail(f"tinygpt.project.json not found in {Path.cwd()} or any parent directory; pass --project", 2)
    try:
        pins = load_project(project_file)
    except ContractError as e:
        return fail(str(e), 2)
    pin = pins.pin(args.name)
    if pin is None:
        return fail(f"{args.name} is not pinned in {project_file}", 2)
    current = state.project_state(project_file).specialist(args.name)
    current_version = current.current.version if current and current.current else None
    if args.to:
        version, digest = args.to, None
    else:
        target = state.rollback_target(project_file, args.name)
        if target is None:
            return fail(f"no version of {args.name} before {current_version or 'the current one'} is recorded; "
                        "name one with --to VERSION")
        version, digest = target.version, target.digest
    if version == current_version:
        return fail(f"{args.name}@{version} is already the current version")

    # Pull and verify before touching the pin file: a rollback must not point at nothing.
    wanted = SpecialistPin(name=args.name, version=version, sha256=digest)
    trial = msgspec.structs.replace(pins, specialists=[wanted])
    (got,) = pull_pins(trial, project_file, timeout=args.timeout)
    if not got.usable:
        return fail(f"cannot roll back to {args.name}@{version}: {got.error}")
    try:
        set_pin(project_file, args.name, got.version, got.digest)
    except ContractError as e:
        return fail(str(e), 2)
    state.record_rollback(project_file, args.name, got.resolved())
    print(f"rolled back {args.name} {current_version or '?'} -> {got.version}: pinned {args.name}@{got.version} "
          f"(sha256 {got.digest[:12]}) in {project_file}")
    print(f"a running `tinygpt up` swaps it in now; the pin said {pin.version!r} before (\"*\" follows new versions)")
    return 0
