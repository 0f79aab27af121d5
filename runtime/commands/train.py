"""Fine-tune a specialist adapter from a token-id dataset (LoRA, DoRA, QLoRA, distillation, KTO / DPO).

Writes an mlx-lm adapter directory (adapter_config.json, adapters.safetensors) with
metrics.jsonl and training_record.json. Interrupted runs resume: rerun the same command.
One training runs per machine at a time; a second one waits for the first.
Every hyperparameter of the training record is an option; --config FILE.json sets many
at once (options given on the command line win)."""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

# The training contract's methods; contracts import no MLX.
from tinygpt.runtime.contracts.specialist import METHODS

EXAMPLE = (
    "tinygpt train --model smollm2-135m-instruct --data datasets/weather --out adapters/weather --steps 300\n"
    "  tinygpt train --model smollm2-135m-instruct --data datasets/weather --out adapters/weather-qlora --method qlora\n"
    "  tinygpt train --model student --teacher teacher --method distill-logit --distill-top-k 32 --data D --out O\n"
    "  tinygpt train --model smollm2-135m-instruct --data datasets/weather --out adapters/weather-kto --method kto"
)



HELP = {
    "steps": "optimizer updates to run",
    "batch_size": "rows per micro-batch (packed sequences with --pack)",
    "grad_accumulation": "micro-batches per optimizer update",
    "learning_rate": "peak learning rate",
    "warmup_steps": "linear warmup updates before the schedule",
    "max_seq_length": "longer rows are cut; with --pack, the packed length",
    "pack": "pack short rows into sequences of --max-seq-length tokens",
    "grad_checkpoint": "recompute activations in the backward pass (less memory, slower)",
    "num_layers": "adapt the last N transformer blocks (-1: all)",
    "eval_every": "validate every N updates (0: only at the end)",
    "val_batches": "validation batches per evaluation (-1: the whole split)",
    "early_stopping_patience": "stop after N evaluations without improvement (0: off)",
    "checkpoint_every": "save a resumable checkpoint every N updates",
    "distill_top_k": "cache the teacher's top-k logits instead of keeping it loaded (0: full logits)",
    "teacher_endpoint": "OpenAI-compatible base URL (…/v1) answering for distill-seq",
    "teacher_accept": "module:function(prompt, answer, reference) -> bool deciding which answers to keep",
    "init_adapter": "continue training from this adapter directory (for kto / dpo also the reference)",
    "pref_beta": "kto / dpo: strength of the implicit KL to the reference (larger stays closer)",
    "kto_desirable_weight": "kto: weight of desirable (successful) examples",
    "kto_undesirable_weight": "kto: weight of undesirable (failed) examples",
    "kto_reference_point": "kto: z0 is 0 (failures must fall below the reference) or the batch's mean reward",
    "pref_sft_weight": "cross entropy on successes / chosen answers added to the preference loss (kto-sft: 1)",
}


def _config_fields():
    import msgspec

    from tinygpt.runtime.contracts.training import TrainingConfig

    hints = typing.get_type_hints(TrainingConfig)
    for field in msgspec.structs.fields(TrainingConfig):
        if field.name != "schema_version":
            yield field.name, hints[field.name], field.default


def _option(parser: argparse.ArgumentParser, name: str, hint, default) -> None:
    flag = "--" + name.replace("_", "-")
    kwargs = {"dest": name, "default": None, "help": HELP.get(name, "") + f" (default: {default})"}
    args = typing.get_args(hint)
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(hint) is typing.Literal:
        parser.add_argument(flag, choices=args, **kwargs)
    elif hint in (int, float, str):
        parser.add_argument(flag, type=hint, **kwargs)
    elif list[str] in args:
        parser.add_argument(flag, nargs="+", metavar="KEY", **kwargs)
    elif float in args or int in args:  # an optional number
        parser.add_argument(flag, type=float if float in args else int, **kwargs)
    else:  # optional str
        parser.add_argument(flag, type=str, **kwargs)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="base model: a cached name or a model directory")
    parser.add_argument("--data", required=True, type=Path, help="dataset directory (manifest.json + row files)")
    parser.add_argument("--out", required=True, type=Path, help="adapter directory to create")
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--teacher", help="teacher model for distill-* (a cached name or a directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="specialist name recorded with the adapter (default: the --out folder name)")
    parser.add_argument("--config", type=Path, help="JSON file of hyperparameters (the training record's keys)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is still written)")
    group = parser.add_argument_group("hyperparameters")
    for name, hint, default in _config_fields():
        _option(group, name, hint, default)


def hyperparameters(args: argparse.Namespace) -> dict:
    """--config file values, overridden by options given on the command line."""
    values = json.loads(args.config.read_text()) if args.config else {}
    for name, _, _ in _config_fields():
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return values


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.runtime.contracts.base import ContractError
    from tinygpt.runtime.contracts.jobs import FinetuneJob
    from tinygpt.workers.finetune import run as finetune
    from tinygpt.workers.training.errors import TrainingError

    err = Console(stderr=True, soft_wrap=True)
    try:
        job = FinetuneJob(
            specialist=args.name or args.out.name,
            base_model=args.model,
            dataset_dir=str(args.data),
            output_dir=str(args.out),
            method=args.method,
            hyperparameters=hyperparameters(args),
            teacher_model=args.teacher,
            seed=args.seed,
        )
        record = finetune(job, progress=not args.no_progress, say=lambda m: err.print(escape(m)))
    except (TrainingError, ContractError, json.JSONDecodeError, OSError) as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 1
    metrics = record.metrics
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("initial_val_loss", "val_loss", "train_loss") if k in metrics)
    Console(soft_wrap=True).print(f"[green]wrote[/] {args.out} ({record.method}, step {record.best_step}; {summary})")
    return 0
