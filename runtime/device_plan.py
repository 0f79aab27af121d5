"""Which GPU each process of `tinygpt up` / `tinygpt worker` computes on, as environment variables.

MLX's CUDA backend computes on the first visible CUDA device, so a process is pinned to a
card the way any CUDA program is: ``CUDA_VISIBLE_DEVICES=<id>`` in its environment before
it starts (set here, for spawned workers; `up` pins its own in-process runtime before MLX
loads). With the GPUs ``G = [g0, g1, ...]`` given by ``--gpus``:

- no GPU (``--gpus none``, or none found): nothing is pinned; what runs today.
- one GPU: the runtime and the workers share it, each with a memory budget
  (``TINYGPT_MEMORY_FRACTION``): the runtime keeps ``RUNTIME_SHARE`` of the card, the
  workers split ``WORKER_SHARE`` between them, so a training job never takes the memory the
  runtime serves from.
- several GPUs: the runtime has g0 to itself (no cap); at least one pipeline worker per
  other GPU, pinned to it; the first worker on each card serves ``train`` too, with that
  card's own locks (``TINYGPT_GPU`` scopes the per-machine train-queue and training locks to
  the card). RQ hands each queued job to whichever worker is free, so a build queue spreads
  over the cards. More ``--workers`` than GPUs put the extra workers round-robin on the
  same cards, sharing each card's worker budget.

`tinygpt worker --gpus` (a host of workers only) uses every card it is given; `up` tells
its worker supervisor which card the runtime shares (``TINYGPT_RUNTIME_GPU``).

Pure planning, no MLX: tested on the CPU with made-up device lists (tests/test_device.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec

RUNTIME_SHARE = 0.45
WORKER_SHARE = 0.45  # the workers' part of a card the runtime also uses (the rest is headroom)
ALONE_SHARE = 0.9  # the workers' part of a card of their own
EXCLUSIVE = frozenset({"train"})  # one job at a time per device (queue/stages.EXCLUSIVE)
RUNTIME_GPU_ENV = "TINYGPT_RUNTIME_GPU"  # set by `up` for its workers: the card the runtime uses


class WorkerSlot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One worker process: its queues and the environment that pins it."""

    index: int
    queues: list[str]
    gpu: str | None = None  # the physical id (as CUDA_VISIBLE_DEVICES names it)
    env: dict[str, str] = {}


class UpPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`tinygpt up --gpus`: the runtime's pin and what its worker supervisor is told."""

    gpus: list[str]
    runtime_env: dict[str, str]
    worker_gpus: list[str]
    # The supervisor's environment: all the planned cards visible (the runtime's own pin
    # must not hide them) and which card the runtime shares.
    worker_env: dict[str, str]

    def describe(self) -> str:
        if not self.gpus:
            return "no GPU pinned"
        shared = " (shared with the workers)" if self.gpus[0] in self.worker_gpus else ""
        return f"runtime on GPU {self.gpus[0]}{shared}; workers on GPU {','.join(self.worker_gpus)}"


def parse_gpus(spec: str | None, available: list[str]) -> list[str]:
    """``all`` | ``none`` | ``0,2,...`` (ids as `available` names them) → the GPUs to use.

    Raises ValueError naming an unknown or repeated id.
    """
    text = (spec or "none").strip().lower()
    if text in ("none", "", "cpu"):
        return []
    if text == "all":
        return list(available)
    ids = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [i for i in ids if i not in available]
    if unknown:
        have = ", ".join(available) or "none"
        raise ValueError(f"--gpus {spec}: no GPU {', '.join(unknown)} here (GPUs: {have})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {spec}: a GPU is named twice")
    return ids


def _pin(gpu: str, fraction: float | None) -> dict[str, str]:
    env = {"CUDA_VISIBLE_DEVICES": gpu, "TINYGPT_DEVICE": "gpu", "TINYGPT_GPU": gpu}
    if fraction is not None:
        env["TINYGPT_MEMORY_FRACTION"] = f"{fraction:.4f}"
    return env


def plan_workers(gpus: list[str], workers: int, queues: list[str], runtime_gpu: str | None = None) -> list[WorkerSlot]:
    """`workers` worker processes over `gpus` (at least one per GPU), each pinned to its card.

    Without GPUs: unpinned, the exclusive queues on the first worker only (as before).
    With GPUs: the first worker on each card also serves the exclusive queues, with that
    card's own locks; a card the runtime uses (`runtime_gpu`) gives its workers
    WORKER_SHARE of its memory, a card of their own ALONE_SHARE, split evenly.
    """
    workers = max(1, workers)
    if not gpus:
        slots = [WorkerSlot(index=i, queues=queues if i == 0 else [q for q in queues if q not in EXCLUSIVE])
                 for i in range(workers)]
        return [s for s in slots if s.queues]
    workers = max(workers, len(gpus))
    per_card = {c: sum(1 for i in range(workers) if gpus[i % len(gpus)] == c) for c in gpus}
    slots = []
    for i in range(workers):
        card = gpus[i % len(gpus)]
        qs = [q for q in queues if q not in EXCLUSIVE or i < len(gpus)]
        if not qs:
            continue
        share = WORKER_SHARE if card == runtime_gpu else ALONE_SHARE
        slots.append(WorkerSlot(index=i, queues=qs, gpu=card, env=_pin(card, share / per_card[card])))
    return slots


def plan_up(gpus: list[str]) -> UpPlan:
    """One GPU: the runtime and the workers share it (RUNTIME_SHARE for the runtime).
    Several: the runtime has the first to itself, the workers the others."""
    if not gpus:
        return UpPlan(gpus=[], runtime_env={}, worker_gpus=[], worker_env={})
    alone = len(gpus) > 1
    worker_gpus = gpus[1:] if alone else list(gpus)
    return UpPlan(
        gpus=list(gpus),
        runtime_env=_pin(gpus[0], None if alone else RUNTIME_SHARE),
        worker_gpus=worker_gpus,
        worker_env={"CUDA_VISIBLE_DEVICES": ",".join(gpus), RUNTIME_GPU_ENV: gpus[0]},
    )


def physical_ids(count: int, visible: str | None) -> list[str]:
    """The ids to put in a child's CUDA_VISIBLE_DEVICES: this process's own list when it
    has one (a child's index 1 is the parent's second visible card), else 0..count-1."""
    if visible:
        ids = [p.strip() for p in visible.split(",") if p.strip()]
        return ids[:count]
    return [str(i) for i in range(count)]


def gpu_count() -> int:
    """GPUs MLX sees, asked in a fresh interpreter so this process's CUDA stays unset
    (the runtime's pin must come first); 0 where MLX has no GPU backend."""
    code = "import mlx.core as mx; print(mx.device_count(mx.gpu) if mx.is_available(mx.gpu) else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return 0


def available_gpus() -> list[str]:
    return physical_ids(gpu_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def lock_scope() -> str:
    """Suffix for per-machine locks (train queue, training lock): per card when pinned."""
    gpu = os.environ.get("TINYGPT_GPU", "").strip()
    return f"-gpu{gpu}" if gpu else ""
