"""A LoRA fit on a dataset in its own process: the `tinygpt train` command `tinygpt env run` runs.

Training runs in a spawned process: it loads an MLX model of its own, and the runtime's
model thread in the calling process must stay the only thread of it that touches MLX.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tinygpt.runtime.contracts.base import Contract


class TrainError(RuntimeError):
    """`tinygpt train` failed (its own error is printed above)."""


class TrainSettings(Contract):
    """A LoRA fit: `tinygpt env run`'s rounds and the demo's build policy (its `training`)."""

    # About two passes over the twenty-odd distinct successes a default run keeps. Every
    # row is ~850 tokens (tool list and worked examples) for ~50 trained ones, so steps
    # are what costs: ~20 s each with batch 2 on 2 shared cores.
    steps: int = 24
    batch_size: int = 2
    learning_rate: float = 1e-4
    # Adapting only the top blocks keeps the backward pass short on a CPU.
    num_layers: int = 8
    lora_rank: int = 8
    seed: int = 0

    def hyperparameters(self) -> dict:
        """The same fit as a build policy's `training` (TrainingConfig fields)."""
        return {
            "steps": self.steps, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
            "num_layers": self.num_layers, "lora_rank": self.lora_rank, "warmup_steps": max(1, self.steps // 10),
            # Validate at the end only: a handful of validation rows would pick an early
            # checkpoint by noise (the gate is the real check), and each pass costs minutes here.
            "eval_every": 0, "checkpoint_every": max(1, self.steps // 2), "report_every": max(1, self.steps // 6),
        }


class Trained(Contract):
    adapter_dir: str
    command: list[str]
    steps_done: int
    best_step: int
    metrics: dict[str, float]
    seconds: float


def train_command(model: str, dataset_dir: Path, out: Path, name: str, s: TrainSettings, method: str = "lora") -> list[str]:
    """The `tinygpt train` command line (printed, so it can be rerun by hand)."""
    h = s.hyperparameters()
    return [
        sys.executable, "-m", "tinygpt.runtime.cli", "train", "--model", model, "--data", str(dataset_dir),
        "--out", str(out), "--name", name, "--method", method, "--no-progress", "--seed", str(s.seed), "--steps", str(s.steps),
        "--batch-size", str(s.batch_size), "--learning-rate", str(s.learning_rate), "--num-layers", str(s.num_layers),
        "--lora-rank", str(s.lora_rank), "--warmup-steps", str(h["warmup_steps"]),
        "--eval-every", "0", "--checkpoint-every", str(h["checkpoint_every"]), "--report-every", str(h["report_every"]),
    ]


def train(model: str, dataset_dir: Path, out: Path, name: str, s: TrainSettings, method: str = "lora") -> Trained:
    """Run `tinygpt train` in its own process and read back its training record."""
    import time

    from tinygpt.runtime.contracts.io import read_json
    from tinygpt.runtime.contracts.training import TRAINING_RECORD, TrainingRecord

    cmd = train_command(model, dataset_dir, out, name, s, method)
    started = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise TrainError(f"training failed (exit {done.returncode}); its error is printed above")
    record = read_json(out / TRAINING_RECORD, TrainingRecord)
    return Trained(
        adapter_dir=str(out), command=cmd, steps_done=record.steps_done, best_step=record.best_step,
        metrics=dict(record.metrics), seconds=time.perf_counter() - started,
    )
