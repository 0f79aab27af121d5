"""`tinygpt`: one dispatcher, lazy imports.

The table below is all `tinygpt --help` needs, so listing commands imports nothing
heavy. A command's module (``tinygpt.runtime.commands.<name>``) is imported only when
that command runs or its own ``--help`` is asked for; modules that need MLX import it
inside ``run`` so ``tinygpt status`` stays fast and MLX-free.

A command module provides::

    EXAMPLE = "tinygpt models pull smollm2-135m-instruct"   # shown in --help
    def configure(parser: argparse.ArgumentParser) -> None   # add arguments
    def run(args: argparse.Namespace) -> int                 # the exit code
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under tinygpt.runtime.commands, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {}


def register(name: str, module: str, summary: str) -> None:
    COMMANDS[name] = (module, summary)


register("up", "up", "bring up the whole daemon on the embedded defaults")
register("serve", "serve", "serve a model over an OpenAI-compatible API (tool calls, specialists)")
register("status", "status", "show Redis, queues, failed jobs, datasets and trajectories")
register("worker", "worker", "start pipeline workers for some or all queues")
register("ingest", "ingest", "put recorded trajectory files on the pipeline")
register("jobs", "jobs", "list, retry or drop failed pipeline jobs")
register("dataset", "dataset", "import mlx-lm JSONL into token-id datasets, or show one")
register("train", "train", "fine-tune a specialist (LoRA, DoRA, QLoRA, distillation)")
register("publish", "publish", "publish a specialist into a registry (package, index, notify runtimes)")
register("pull", "pull", "pull the pinned specialists: resolve, download, verify sha256, record")
register("rollback", "rollback", "go back to the previous version of a pinned specialist")
register("build", "build", "enqueue a specialist build: (dataset ▶) finetune ▶ eval gate ▶ publish")
register("eval-gate", "eval_gate", "gate a specialist on the project's eval suites (exit 0 pass, 1 regression, 2 bad input)")
register("demo", "demo", "run the bundled demo: an agent's sessions become a specialist that does better")
register("env", "env", "environments: list, check a checker, or train on your tools, tasks and checker")
register("models", "models", "pull, list and inspect MLX models in the cache")
register("generate", "generate", "generate text from a cached model (a quick check)")
register("schema", "schema", "print the JSON Schema of a contract (e.g. the project pin file)")
register("validate", "validate", "check a contract file (tinygpt.project.json, a trajectory, ...)")
register("redis", "redis", "run the embedded redis-server in the foreground")

EXIT_USAGE = 2


def _epilog() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["commands:"]
    lines += [f"  {n.ljust(width)}  {s}" for n, (_, s) in COMMANDS.items()]
    lines += ["", "Run `tinygpt COMMAND --help` for a command's options and an example."]
    return "\n".join(lines)


def _load(name: str):
    module, _ = COMMANDS[name]
    return importlib.import_module(f"tinygpt.runtime.commands.{module}")


def build_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command (imports that command's module only)."""
    mod = _load(name)
    doc = (mod.__doc__ or COMMANDS[name][1]).strip()
    parser = argparse.ArgumentParser(
        prog=f"tinygpt {name}",
        description=doc,
        epilog=f"example:\n  {mod.EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mod.configure(parser)
    parser.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="tinygpt",
        description="TinyGPT: a local agent runtime and specialist factory on MLX.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", nargs="?", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"tinygpt: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser(name).parse_args(rest)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
