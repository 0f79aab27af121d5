"""Token-id datasets: import mlx-lm JSONL (chat, tools, completions, text) or show one.

`import` tokenizes each record once with the base model's tokenizer and chat template and
writes the rows `tinygpt train` reads: token ids plus a loss mask that is 1 only on the
assistant's own tokens (through its end-of-turn token). FILE may be one .jsonl file
(split into train/valid/test by content hash) or a directory with train/valid/test.jsonl.
`show` prints a dataset's manifest and a few rows with the trained tokens highlighted."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = (
    "tinygpt dataset import weather.jsonl --model smollm2-135m-instruct --out datasets/weather\n"
    "  tinygpt dataset show datasets/weather --model smollm2-135m-instruct --rows 2"
)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = sub.add_parser("import", help="mlx-lm JSONL -> token-id rows + manifest")
    imp.add_argument("source", type=Path, metavar="FILE", help="a .jsonl file, or a folder with train/valid/test.jsonl")
    imp.add_argument("--model", required=True, help="base model whose tokenizer and chat template to use")
    imp.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    imp.add_argument("--name", help="dataset name (default: the file's stem)")
    imp.add_argument("--valid-fraction", type=float, default=0.1, help="share of a single file held out for validation")
    imp.add_argument("--test-fraction", type=float, default=0.0, help="share of a single file held out for testing")
    imp.add_argument("--seed", type=int, default=0, help="changes which rows the split assigns where")
    show = sub.add_parser("show", help="print a dataset's manifest and sample rows")
    show.add_argument("dataset", type=Path, metavar="DIR")
    show.add_argument("--model", help="decode rows with this model's tokenizer (default: the manifest's base)")
    show.add_argument("--rows", type=int, default=1, help="rows to print from the train split")


def _tokenizer(model_dir: Path):
    import json

    from mlx_lm.utils import load_tokenizer

    eos = json.loads((model_dir / "config.json").read_text()).get("eos_token_id")
    return load_tokenizer(model_dir, eos_token_ids=eos)


def _import(args, out, err) -> int:
    from tinygpt.workers.training import models
    from tinygpt.runtime.models.manifest import model_digest
    from tinygpt.workers.training.importer import import_jsonl

    if not args.source.exists():
        err.print(f"[red]error[/]: {args.source} does not exist")
        return 2
    model_dir = models.resolve(args.model)
    manifest, stats = import_jsonl(
        args.source,
        _tokenizer(model_dir),
        args.out,
        base_model=args.model,
        base_digest=model_digest(model_dir),
        name=args.name,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    splits = ", ".join(f"{s} {f.rows}" for s, f in sorted(manifest.splits.items()))
    formats = ", ".join(f"{k} {v}" for k, v in sorted(stats.formats.items()))
    out.print(f"[green]wrote[/] {args.out}: {manifest.rows} rows ({splits}; {formats}), {manifest.trained_tokens} trained tokens")
    if stats.failures or manifest.pairs:
        pairs = manifest.pairs.rows if manifest.pairs else 0
        out.print(f"  for preference training: {stats.failures} of the rows are failures (\"label\": false), {pairs} pairs")
    if stats.skipped_turns:
        err.print(f"[yellow]note[/]: {stats.skipped_turns} assistant turns were masked out (the chat template rewrites them)")
    return 0


def _show(args, out, err) -> int:
    from rich.markup import escape

    from tinygpt.workers.training import models
    from tinygpt.workers.training.data import load_dataset

    dataset = load_dataset(args.dataset)
    m = dataset.manifest
    out.print(f"{m.name}: base {m.base_model} ({m.base_digest[:12] or 'no digest'}), digest {m.digest[:12]}")
    for split, rows in sorted(dataset.splits.items()):
        out.print(f"  {split}: {len(rows)} rows, {sum(len(r.input_ids) for r in rows)} tokens")
    tokenizer = _tokenizer(models.resolve(args.model or m.base_model))
    for row in dataset.rows("train")[: args.rows]:
        out.rule(f"row {row.id}")
        # Runs of equal mask decoded together; trained text in green.
        text, start = "", 0
        for i in range(1, len(row.input_ids) + 1):
            if i == len(row.input_ids) or row.loss_mask[i] != row.loss_mask[start]:
                piece = escape(tokenizer.decode(row.input_ids[start:i]))
                text += f"[green]{piece}[/]" if row.loss_mask[start] else f"[dim]{piece}[/]"
                start = i
        out.print(text, highlight=False)
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.workers.training.errors import TrainingError

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        return _import(args, out, err) if args.action == "import" else _show(args, out, err)
    except (TrainingError, ValueError, OSError) as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 2
