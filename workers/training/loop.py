"""The training loop: mlx-lm's compiled step, plus what a specialist factory needs around it.

The step itself is mlx-lm's (`tuner/trainer.py`): one `mx.compile`d function over the
model, optimizer and random state that accumulates gradients and applies the update
every `grad_accumulation` micro-batches. Around it: validation with best-checkpoint
selection and early stopping, checkpoints to resume from, NaN detection, metrics.

Determinism: batches are planned from (seed, epoch) and the random key is re-seeded from
(seed, micro-batch index) before every micro-batch, so dropout masks depend on the
position in the run, not on the process's history: a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tinygpt.runtime.contracts.training import TrainingConfig

from .checkpoint import LoopState, save_checkpoint
from .data import Batch, BatchPlan
from .errors import NonFiniteLoss
from .report import Reporter


@dataclass
class Objective:
    """A loss over `arrays(batch)`: `loss(model, *arrays) -> (mean loss, token count)`.

    `val_arrays` builds validation batches when they need other inputs (cached teacher
    logits are looked up per split)."""

    loss: Callable
    arrays: Callable[[Batch], tuple]
    val_arrays: Callable[[Batch], tuple] | None = None


class Callbacks:
    """Hooks into a run; override what you need (tests, the queue's heartbeat)."""

    def on_batch(self, step: int, batch: Batch) -> None:
        """Called with every micro-batch just before it is trained on (`step` is 1-based)."""

    def on_checkpoint(self, step: int, folder: Path) -> None:
        """Called after checkpoint `step` is complete on disk."""

    def on_step(self, step: int, total: int, loss: float, tokens_per_second: float) -> None:
        """Called after every optimizer step (the queue reports it as the job's progress)."""


@dataclass
class LoopResult:
    state: LoopState
    final: dict
    best: dict | None
    peak_memory_gb: float


def _snapshot(model) -> dict:
    from mlx.utils import tree_flatten

    # mx arrays are immutable and the optimizer replaces them, so references are a snapshot.
    return dict(tree_flatten(model.trainable_parameters()))


def _random_key(seed: int, micro: int) -> int:
    return (seed * 1_000_003 + micro) % (1 << 32)


def run_loop(
    model,
    optimizer,
    objective: Objective,
    train: BatchPlan,
    val: list[Batch],
    cfg: TrainingConfig,
    *,
    seed: int,
    work: Path,
    reporter: Reporter,
    resume: tuple | None = None,
    callbacks: Callbacks | None = None,
) -> LoopResult:
    """Train until `cfg.steps` optimizer updates or early stopping; see the module docstring."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_map
    from mlx_lm.tuner.trainer import grad_checkpoint

    callbacks = callbacks or Callbacks()
    state, best = LoopState(), None
    if resume is not None:
        state, adapter, optimizer_state, best = resume
        model.load_weights(list(adapter.items()), strict=False)
        optimizer.state = optimizer_state

    accum, clip = cfg.grad_accumulation, cfg.max_grad_norm
    value_and_grad = nn.value_and_grad(model, objective.loss)
    compiled_state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=compiled_state, outputs=compiled_state)
    def step(prev_grad, do_update, *arrays):
        (lvalue, toks), grad = value_and_grad(model, *arrays)
        if prev_grad is not None:
            grad = tree_map(lambda x, y: x + y, grad, prev_grad)
        if do_update:
            if accum > 1:
                grad = tree_map(lambda g: g / accum, grad)
            if clip > 0:
                grad, _ = optim.clip_grad_norm(grad, clip)
            optimizer.update(model, grad)
            grad = None
        return lvalue, toks, grad

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        make = objective.val_arrays or objective.arrays
        for batch in val:
            lvalue, toks = objective.loss(model, *make(batch))
            mx.eval(lvalue, toks)
            total += lvalue.item() * toks.item()
            count += int(toks.item())
        model.train()
        value = total / max(count, 1)
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the validation loss became {value} at step {state.step}; no adapter was written")
        return value

    # mlx-lm checkpoints one layer class by patching it; undo that when the run ends so
    # other models in this process (a teacher, the next test) are unaffected.
    layer_cls = type(model.layers[0])
    original_call = layer_cls.__call__
    if cfg.grad_checkpoint:
        grad_checkpoint(model.layers[0])
    try:
        model.train()
        if val and state.initial_val is None:
            state.initial_val = evaluate()
            reporter.val(0, state.initial_val)
        stream = train.stream(skip=state.step * accum)
        window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
        window_inputs = state.input_tokens
        while state.step < cfg.steps:
            tic = time.perf_counter()
            grad, step_loss, step_tokens = None, 0.0, 0
            for j in range(accum):
                batch = next(stream)
                state.input_tokens += batch.input_tokens
                callbacks.on_batch(state.step + 1, batch)
                arrays = objective.arrays(batch)
                mx.random.seed(_random_key(seed, state.step * accum + j))
                lvalue, toks, grad = step(grad, j == accum - 1, *arrays)
                mx.eval(compiled_state, lvalue, toks, grad)
                loss = lvalue.item()
                if not math.isfinite(loss):
                    raise NonFiniteLoss(
                        f"the training loss became {loss} at step {state.step + 1} "
                        f"(learning rate {optimizer.learning_rate.item():.3g}); no adapter was written. "
                        "Lower the learning rate or check the dataset."
                    )
                step_loss += loss / accum
                step_tokens += int(toks.item())
            elapsed = time.perf_counter() - tic
            state.step += 1
            state.train_time += elapsed
            state.trained_tokens += step_tokens
            state.last_train_loss = step_loss
            window_loss += step_loss
            window_steps += 1
            window_tokens += step_tokens
            window_time += elapsed
            tps = window_tokens / max(window_time, 1e-9)
            reporter.step(state.step, step_loss, tps)
            callbacks.on_step(state.step, cfg.steps, step_loss, tps)
            if state.step % cfg.report_every == 0 or state.step == cfg.steps:
                reporter.write(
                    {
                        "step": state.step,
                        "kind": "train",
                        "train_loss": window_loss / window_steps,
                        "learning_rate": optimizer.learning_rate.item(),
                        "steps_per_second": window_steps / max(window_time, 1e-9),
                        "tokens_per_second": tps,
                        "input_tokens_per_second": (state.input_tokens - window_inputs) / max(window_time, 1e-9),
                        "trained_tokens": state.trained_tokens,
                        "peak_memory_gb": mx.get_peak_memory() / 1e9,
                    }
                )
                window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
                window_inputs = state.input_tokens

            due = cfg.eval_every and state.step % cfg.eval_every == 0
            if val and (due or state.step == cfg.steps):
                value = evaluate()
                state.last_val = value
                reporter.val(state.step, value)
                if state.best_val is None or value < state.best_val - cfg.early_stopping_min_delta:
                    state.best_val, state.best_step, state.evals_since_best = value, state.step, 0
                    best = _snapshot(model)
                else:
                    state.evals_since_best += 1
                    if cfg.early_stopping_patience and state.evals_since_best >= cfg.early_stopping_patience:
                        state.stopped_early = True
                        reporter.say(f"early stop at step {state.step}: no improvement in {state.evals_since_best} evaluations")
                        break
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
                folder = save_checkpoint(work, state, _snapshot(model), optimizer.state, best)
                callbacks.on_checkpoint(state.step, folder)
    finally:
        layer_cls.__call__ = original_call
    return LoopResult(state=state, final=_snapshot(model), best=best, peak_memory_gb=mx.get_peak_memory() / 1e9)
