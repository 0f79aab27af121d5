"""Logit-level distillation: the student matches a local teacher's next-token distributions.

Only sampled-token positions count (loss mask 1), like the plain fine-tune. Two modes:
- full logits: the teacher stays loaded and scores every batch (exact, costs its memory
  and a forward pass per step);
- top-k: the teacher scores every row once, its k best logits per masked position are
  cached on disk (keyed by teacher digest, dataset digest and k), and the teacher is
  freed before the student trains.
Teacher logit i must mean the student's token i, so the tokenizers must be identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from tinygpt.runtime.contracts.dataset import DatasetRow
from tinygpt.runtime.contracts.training import TrainingConfig

from . import losses
from .data import Batch
from .errors import TeacherTokenizerMismatch
from .loop import Objective
from .models import tokenizer_fingerprint


def check_tokenizers(student_tokenizer, teacher_tokenizer, teacher: str) -> None:
    """Raise TeacherTokenizerMismatch unless both map every text to the same ids."""
    if tokenizer_fingerprint(student_tokenizer) != tokenizer_fingerprint(teacher_tokenizer):
        raise TeacherTokenizerMismatch(
            f"teacher {teacher} has a different tokenizer than the student; logit distillation needs one "
            "vocabulary (teacher logit i must be the student's token i). Use --method distill-seq for "
            "a teacher with another tokenizer."
        )


def full_logits_objective(teacher, cfg: TrainingConfig) -> Objective:
    """The teacher scores each batch (outside the compiled step; its output is a constant)."""
    import mlx.core as mx

    def arrays(batch: Batch):
        inputs, targets, weights, mask, seg = losses.batch_arrays(batch)
        teacher_logits = mx.stop_gradient(losses.logits(teacher, inputs, seg))
        mx.eval(teacher_logits)
        return inputs, targets, weights, mask, seg, teacher_logits

    loss = partial(
        losses.distill_full, temperature=cfg.distill_temperature, direction=cfg.distill_direction, alpha=cfg.distill_alpha
    )
    return Objective(loss=loss, arrays=arrays)


class TopK:
    """The teacher's top-k logits for every masked position of a list of rows.

    `positions[offsets[r]:offsets[r+1]]` are row r's target indices (t predicts token
    t + 1); `ids` / `logits` hold the k best token ids and their raw logits there.
    """

    def __init__(self, positions, ids, logits, offsets):
        self.positions, self.ids, self.logits, self.offsets = positions, ids, logits, offsets

    def row(self, r: int):
        a, b = self.offsets[r], self.offsets[r + 1]
        return self.positions[a:b], self.ids[a:b], self.logits[a:b]


def cache_key(teacher_digest: str, dataset_digest: str, split: str, k: int, max_len: int) -> str:
    text = f"topk-v1 {teacher_digest} {dataset_digest} {split} {k} {max_len}"
    return hashlib.sha256(text.encode()).hexdigest()


def precompute_topk(teacher, rows: list[DatasetRow], k: int, max_len: int, cache_file: Path, say: Callable[[str], None]) -> TopK:
    """Score `rows` with the teacher once and cache the top-k; reuses the cache file when present."""
    import mlx.core as mx

    if cache_file.exists():
        data = mx.load(str(cache_file))
        return TopK(*(np.array(data[n]) for n in ("positions", "ids", "logits", "offsets")))
    say(f"teacher: scoring {len(rows)} rows once, keeping the top {k} logits per trained position")
    positions, ids, vals, offsets = [], [], [], [0]
    for row in rows:
        n = min(len(row.input_ids), max_len)
        targets = np.nonzero(np.asarray(row.loss_mask[1:n]))[0].astype(np.int32)
        if len(targets) == 0:  # every trained token was cut off by max_seq_length
            positions.append(targets)
            ids.append(np.zeros((0, k), np.int32))
            vals.append(np.zeros((0, k), np.float32))
            offsets.append(offsets[-1])
            continue
        out = teacher(mx.array([row.input_ids[: n - 1]]))[0]
        picked = out[mx.array(targets)].astype(mx.float32)
        top = mx.argpartition(-picked, kth=k - 1, axis=-1)[:, :k]
        top_vals = mx.take_along_axis(picked, top, axis=-1)
        mx.eval(top, top_vals)
        positions.append(targets)
        ids.append(np.array(top, dtype=np.int32))
        vals.append(np.array(top_vals, dtype=np.float32))
        offsets.append(offsets[-1] + len(targets))
    table = TopK(np.concatenate(positions), np.concatenate(ids), np.concatenate(vals), np.asarray(offsets, np.int64))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.stem}.partial.safetensors")
    mx.save_safetensors(
        str(tmp),
        {
            "positions": mx.array(table.positions),
            "ids": mx.array(table.ids),
            "logits": mx.array(table.logits),
            "offsets": mx.array(table.offsets.astype(np.int32)),
        },
    )
    tmp.replace(cache_file)
    return table


def topk_arrays(table: TopK, k: int) -> Callable[[Batch], tuple]:
    """Batch -> arrays with the cached teacher top-k laid out at each row's packed position."""
    import mlx.core as mx

    def arrays(batch: Batch):
        B, L = batch.inputs.shape
        top_ids = np.zeros((B, L, k), np.int32)
        top_logits = np.zeros((B, L, k), np.float32)
        for b, placed in enumerate(batch.placements):
            for r, start, n in placed:
                pos, ids, vals = table.row(r)
                keep = pos < n - 1  # positions cut off by truncation
                top_ids[b, start + pos[keep]] = ids[keep]
                top_logits[b, start + pos[keep]] = vals[keep]
        return (*losses.batch_arrays(batch), mx.array(top_ids), mx.array(top_logits))

    return arrays


def topk_loss(cfg: TrainingConfig):
    return partial(
        losses.distill_topk, temperature=cfg.distill_temperature, direction=cfg.distill_direction, alpha=cfg.distill_alpha
    )
