"""Publish a specialist into a registry by hand: the same package the pipeline's publish
stage writes (adapter, model card, eval report, manifest, lock.json with the sha256 of
every file, written last), added to the registry's index.json and announced to running
runtimes on Redis, whose pins then pull and hot-swap it.

Publishing needs the eval gate's passing result for these exact weights
(`tinygpt eval-gate ... --out gate-result.json`), or an explicit --no-gate (the model
card then says it was not evaluated, and `"*"` pins never pick it: only a pin naming
that exact version serves it). Versions are immutable: the same version with
other weights is refused; without --version the next whole number is taken, or the
version that already holds these weights."""

from __future__ import annotations

import argparse

EXAMPLE = (
    "tinygpt publish runs/mail-lora --name mail --gate-result runs/mail-eval/gate-result.json\n"
    "  tinygpt publish runs/mail-lora --name mail --version 2 --no-gate --registry specialists"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter_dir", help="mlx-lm adapter directory (adapter_config.json + adapters.safetensors)")
    parser.add_argument("--name", required=True, help="specialist name (lower-case a-z, 0-9, '.', '_', '-')")
    parser.add_argument("--version", help="version to publish (default: the next whole number)")
    parser.add_argument("--gate-result", help="the eval gate's gate-result.json for this adapter (must be a pass)")
    parser.add_argument("--no-gate", action="store_true", help="publish without an eval gate result (the card says so; only an exact-version pin serves it, never \"*\")")
    parser.add_argument("--registry", help="registry directory or file:// URL (default: the project's first local registry)")
    parser.add_argument("--project", help="project pin file (default: the nearest tinygpt.project.json)")
    parser.add_argument("--base-model", help="base model name or directory, for an adapter that records none "
                        "(default: the project's base_model)")
    parser.add_argument("--intended-use", default="", help="the model card's intended-use paragraph")
    parser.add_argument("--no-notify", action="store_true", help="do not announce it on Redis")


def base_digest(model: str) -> str:
    """The content digest of a base model (a cached name or a directory), without loading it."""
    from tinygpt.runtime.models.manifest import model_digest
    from tinygpt.runtime.models.resolve import resolve_model

    return model_digest(resolve_model(model))


def notify_connection():
    """A Redis client when one is running ($REDIS_URL, or the embedded server), else None.

    Publishing by hand never starts a Redis: with none running, no runtime listens anyway.
    """
    import os

    from tinygpt.queue.connection import RedisUnavailable, connect
    from tinygpt.queue.embedded import find_running
    from tinygpt.runtime import paths

    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        running = find_running(paths.redis_dir())
        if running is None:
            return None
        url = running.url
    try:
        return connect(url)
    except RedisUnavailable:
        return None


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from tinygpt.runtime.contracts import ContractError
    from tinygpt.runtime.project import find_project, load_project
    from tinygpt.runtime.registry.errors import PackageError
    from tinygpt.runtime.registry.package import recorded_base
    from tinygpt.runtime.registry.publish import check_gate, local_registry, publish, read_gate

    def fail(message: str, code: int = 2) -> int:
        print(f"tinygpt publish: {message}", file=sys.stderr)
        return code

    if bool(args.gate_result) == bool(args.no_gate):
        return fail("give the eval gate's result (--gate-result FILE) or publish ungated with --no-gate, not both or neither")
    adapter = Path(args.adapter_dir)
    try:
        project_file = Path(args.project) if args.project else find_project()
        pins = load_project(project_file) if project_file else None
        if args.registry:
            registry = local_registry(args.registry, Path.cwd())
        else:
            local = [r for r in (pins.registries if pins else []) if not r.startswith(("http://", "https://"))]
            registry = local_registry(local[0] if local else "specialists", project_file.parent if project_file else Path.cwd())
        gate = None
        if args.gate_result:
            gate = read_gate(Path(args.gate_result))
            check_gate(gate, adapter, args.name)
        base_model, digest = args.base_model or "", ""
        if recorded_base(adapter) is None:
            base_model = base_model or (pins.base_model if pins else "")
            if not base_model:
                return fail(f"{adapter} records no base model: pass --base-model NAME_OR_DIR")
            digest = base_digest(base_model)
        conn = None if args.no_notify else notify_connection()
        result = publish(adapter, registry, name=args.name, version=args.version, base_model=base_model,
                         base_digest=digest, gate=gate, intended_use=args.intended_use, conn=conn)
    except (PackageError, ContractError, ValueError) as e:
        return fail(str(e))
    what = "published" if result.created else "already published (same weights)"
    print(f"{what} {result.name}@{result.version} ({result.digest[:12]}) -> {result.path}")
    if result.notified >= 0:
        print(f"notified {result.notified} running runtime(s)")
    else:
        print("no Redis running: nothing notified (runtimes pick it up when they next start or sync)")
    return 0
