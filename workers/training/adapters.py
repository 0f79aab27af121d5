"""Adapter layers, optimizer and schedule, all from mlx-lm's tuner, plus the adapter format.

The adapter directory is mlx-lm's own (`adapter_config.json` + `adapters.safetensors`),
so `mlx_lm.load(base, adapter_path=dir)` serves it; the `tinygpt` key of the config adds
what mlx-lm ignores and TinyGPT checks: which base weights (by digest) it belongs to.
"""

from __future__ import annotations

from pathlib import Path

from tinygpt.runtime.contracts.training import TRAINING_RECORD, TrainingConfig
from tinygpt.runtime.models import adapter_format
from tinygpt.runtime.models.adapter_format import AdapterFormatError

from .checkpoint import ADAPTER_CONFIG, ADAPTER_FILE
from .errors import BaseModelMismatch, TrainingError


def lora_parameters(cfg: TrainingConfig) -> dict:
    params = {"rank": cfg.lora_rank, "scale": cfg.lora_scale, "dropout": cfg.lora_dropout}
    if cfg.lora_keys is not None:
        params["keys"] = list(cfg.lora_keys)
    return params


def attach(model, cfg: TrainingConfig, *, dora: bool) -> int:
    """Freeze the base and put LoRA (or DoRA) layers on the last blocks; returns how many blocks."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    total = len(model.layers)
    num_layers = total if cfg.num_layers == -1 else cfg.num_layers
    if not 0 < num_layers <= total:
        raise TrainingError(f"num_layers={cfg.num_layers}: the model has {total} blocks (use 1..{total}, or -1 for all)")
    model.freeze()
    linear_to_lora_layers(model, num_layers, lora_parameters(cfg), use_dora=dora)
    return num_layers


def load_initial(model, adapter_dir: Path) -> None:
    """Start from an existing adapter's weights (same layout as this run's layers)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = mx.load(str(adapter_dir / ADAPTER_FILE))
    params = dict(tree_flatten(model.trainable_parameters()))
    problems = [
        f"{name}: {tuple(w.shape)} vs {tuple(params[name].shape)}" if name in params else f"{name}: not in this run's layers"
        for name, w in weights.items()
        if name not in params or w.shape != params[name].shape
    ]
    if problems:
        raise TrainingError(
            f"{adapter_dir} does not fit this run's adapter layers (match --lora-rank / --num-layers / --method): "
            + "; ".join(problems[:3])
        )
    model.load_weights(list(weights.items()), strict=False)


def check_base(adapter_dir: Path, base_digest: str) -> None:
    """Refuse an adapter whose recorded base is not the base given (by digest)."""
    recorded = recorded_base(adapter_dir)
    if recorded and recorded[1] != base_digest:
        raise BaseModelMismatch(
            f"adapter {adapter_dir} was trained on {recorded[0]} (digest {recorded[1][:12]}), "
            f"but the base model given has digest {base_digest[:12]}"
        )


def recorded_base(adapter_dir: Path) -> tuple[str, str] | None:
    """(name, digest) of the base an adapter records (`adapter_format.recorded_base`);
    an unreadable adapter is bad training input (TrainingError)."""
    if not (adapter_dir / ADAPTER_CONFIG).is_file() and not (adapter_dir / TRAINING_RECORD).is_file():
        raise TrainingError(f"{adapter_dir} is not an adapter directory (no {ADAPTER_CONFIG})")
    try:
        return adapter_format.recorded_base(adapter_dir)
    except AdapterFormatError as e:
        raise TrainingError(str(e)) from None


def adapter_config(cfg: TrainingConfig, *, dora: bool, num_layers: int, model_path: Path, base: dict) -> dict:
    """mlx-lm's adapter_config.json (what `load_adapters` reads), with TinyGPT's base record."""
    return {
        "fine_tune_type": "dora" if dora else "lora",
        "num_layers": num_layers,
        "lora_parameters": lora_parameters(cfg),
        # mlx-lm's `--model`: the weights this adapter goes on (the 4-bit copy for QLoRA).
        "model": str(model_path),
        "tinygpt": base,
    }


def build_optimizer(cfg: TrainingConfig):
    """The optimizer with warmup + decay built by mlx-lm's `build_schedule`."""
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import build_schedule

    lr, end = cfg.learning_rate, cfg.learning_rate * cfg.final_lr_fraction
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    if cfg.lr_schedule == "cosine":
        schedule = {"name": "cosine_decay", "arguments": [lr, decay_steps, end]}
    elif cfg.lr_schedule == "linear":
        schedule = {"name": "linear_schedule", "arguments": [lr, end, decay_steps]}
    else:
        schedule = {"name": "linear_schedule", "arguments": [lr, lr, 1]}
    schedule["warmup"] = cfg.warmup_steps
    learning_rate = build_schedule(schedule)
    if cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return optim.Adam(learning_rate=learning_rate)
    return optim.SGD(learning_rate=learning_rate, weight_decay=cfg.weight_decay)
