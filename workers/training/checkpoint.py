"""Checkpoints for resume, and the atomic write of the finished adapter directory.

A run works in a hidden sibling of its output, `.<out>.work-<run key>/`: metrics.jsonl
and `checkpoint-<step>/` folders. A checkpoint is complete when its `state.json` exists
(written last) and `latest` names it, so a kill at any instant leaves either the old or
the new checkpoint usable. The work folder is keyed by the run key, so rerunning the
same command resumes, and a changed command starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.io import atomic_write_bytes

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
METRICS_FILE = "metrics.jsonl"


class LoopState(msgspec.Struct, kw_only=True):
    """Where a run is: everything besides the weights and optimizer needed to continue."""

    step: int = 0
    best_val: float | None = None
    best_step: int = 0
    initial_val: float | None = None
    last_val: float | None = None
    evals_since_best: int = 0
    trained_tokens: int = 0
    input_tokens: int = 0
    train_time: float = 0.0
    last_train_loss: float | None = None
    stopped_early: bool = False


def work_dir(out: Path, run_key: str) -> Path:
    return out.parent / f".{out.name}.work-{run_key[:16]}"


def save_checkpoint(work: Path, state: LoopState, adapter: dict, optimizer_state: dict, best: dict | None) -> Path:
    """Write checkpoint `state.step` and point `latest` at it; older ones are removed."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    folder = work / f"checkpoint-{state.step:07d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / ADAPTER_FILE), adapter)
    mx.save_safetensors(str(folder / "optimizer.safetensors"), dict(tree_flatten(optimizer_state)))
    if best is not None:
        mx.save_safetensors(str(folder / "best.safetensors"), best)
    atomic_write_bytes(folder / "state.json", msgspec.json.encode(state))
    atomic_write_bytes(work / "latest", folder.name.encode())
    for old in work.glob("checkpoint-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(work: Path):
    """(state, adapter weights, optimizer state tree, best weights or None), or None."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    try:
        folder = work / (work / "latest").read_text().strip()
        state = msgspec.json.decode((folder / "state.json").read_bytes(), type=LoopState)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
    adapter = mx.load(str(folder / ADAPTER_FILE))
    optimizer_state = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
    best_file = folder / "best.safetensors"
    best = mx.load(str(best_file)) if best_file.exists() else None
    return state, adapter, optimizer_state, best


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines past `step`: a resumed run logs those steps again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


def write_output(out: Path, files: dict[str, bytes | Path], last: tuple[str, bytes]) -> None:
    """Create `out` with `files`, then `last` (the record); all or nothing.

    Everything goes into a temp folder next to `out`, which is renamed into place, so a
    reader never sees an adapter without its record or a half-written weights file.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copy2(content, tmp / name)
            else:
                (tmp / name).write_bytes(content)
        (tmp / last[0]).write_bytes(last[1])
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
