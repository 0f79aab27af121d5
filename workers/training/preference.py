"""Preference training on recorded token ids: KTO, DPO, and KTO with an SFT term.

- ``kto`` (Ethayarajh et al., 2024): unpaired examples, desirable (successful episodes,
  the dataset's rows) and undesirable (failed episodes, `desirable=False`). Each one's
  implicit reward is r = log pi(y|x) - log ref(y|x) over its sampled tokens; the loss is
  lambda_D (1 - sigmoid(beta (r - z0))) for desirable and lambda_U (1 - sigmoid(beta (z0 - r)))
  for undesirable examples. z0, the reference point, is 0 by default: a failure must end
  up less likely than under the reference, not merely below a moving point. With
  `kto_reference_point="batch"` it is the batch mean of r clamped at 0 and held constant
  (a cheap stand-in for the paper's KL estimate from mismatched pairs, which would cost
  another forward pass); measured on the toy task in the tests, that lets failures rise
  along with the successes' shared structure (chat markup, end of turn).
- ``dpo`` (Rafailov et al., 2023): the dataset's pairs, two answers to one prompt with
  different rewards: -log sigmoid(beta ((c - c_ref) - (r - r_ref))).
- ``kto-sft``: KTO plus a token-mean cross entropy on the desirable rows
  (`pref_sft_weight`, default 1), i.e. SFT on successes that also pushes failures down.
  `pref_sft_weight` on dpo adds the same term on chosen answers (RPO).

Only sampled tokens count (loss mask 1), as in SFT: log-probs are sums over the masked-in
targets of each sequence, never over prompt or tool text. The reference is the starting
weights (the base, or the `init_adapter` it continues from): its log-probs are computed
once, before the first step, and cached next to the dataset in `reference/<key>` (the key
hashes the reference digest, the dataset manifest, the split, the row kind and the
length cap), so training holds one model, as LoRA does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from tinygpt.runtime.contracts.dataset import DatasetRow, PreferencePair
from tinygpt.runtime.contracts.training import TrainingConfig

from . import losses
from .data import Batch, BatchPlan, Dataset, check_rows, collate
from .errors import PreferenceDataError, ReferenceMismatch
from .loop import Objective

REFERENCE_VERSION = "ref-v1"
REFERENCE_DIR = "reference"


def sft_weight(method: str, cfg: TrainingConfig) -> float:
    """The cross-entropy term's weight: kto-sft defaults to 1, the others to 0."""
    if cfg.pref_sft_weight is not None:
        return cfg.pref_sft_weight
    return 1.0 if method == "kto-sft" else 0.0


def reference_digest(base_digest: str, init_adapter_sha: str) -> str:
    """The identity of the reference weights: the base, plus the adapter it starts from."""
    if not init_adapter_sha:
        return base_digest
    return hashlib.sha256(f"{base_digest}:{init_adapter_sha}".encode()).hexdigest()


# --- batches ---------------------------------------------------------------------------


def pair_rows(pairs: list[PreferencePair]) -> list[DatasetRow]:
    """Every chosen answer, then every rejected one, as rows over the recorded ids.

    The prompt is context (mask 0); every answer id was sampled by the model (mask 1)."""

    def row(p: PreferencePair, kind: str, answer: list[int]) -> DatasetRow:
        return DatasetRow(
            id=f"{p.id}-{kind}", input_ids=p.prompt_ids + answer,
            loss_mask=[0] * len(p.prompt_ids) + [1] * len(answer), split=p.split,
        )

    return [row(p, "chosen", p.chosen_ids) for p in pairs] + [row(p, "rejected", p.rejected_ids) for p in pairs]


@dataclass
class PairPlan(BatchPlan):
    """Batches of pairs: `rows` is `pair_rows(pairs)`; a batch holds B chosen sequences,
    then the same B pairs' rejected ones (planned, shuffled and resumed like BatchPlan)."""

    def __post_init__(self):
        n = len(self.rows) // 2
        self.lengths = [max(len(self.rows[i].input_ids), len(self.rows[n + i].input_ids)) for i in range(n)]

    def collate(self, plan: list[list[int]]) -> Batch:
        n = len(self.rows) // 2
        picked = [seq[0] for seq in plan]
        return collate(self.rows, [[i] for i in picked] + [[n + i] for i in picked], self.max_len, False)


def _row_index(batch: Batch) -> list[int]:
    return [placed[0][0] for placed in batch.placements]


# --- reference log-probs ---------------------------------------------------------------


def sequence_logps(model, rows: list[DatasetRow], max_len: int, batch_size: int = 8) -> np.ndarray:
    """Sum of log p(token) over each row's masked-in targets, under `model` as it is now."""
    import mlx.core as mx

    out = np.zeros(len(rows), np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = list(range(start, min(start + batch_size, len(rows))))
        batch = collate(rows, [[i] for i in chunk], max_len, False)
        inputs, targets, _, mask, _ = losses.batch_arrays(batch)
        logps = losses.sequence_logps(model, inputs, targets, mask)
        mx.eval(logps)
        out[chunk] = np.array(logps, dtype=np.float32)
    return out


def _ids_hash(rows: list[DatasetRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.id}:{len(r.input_ids)};".encode())
    return h.hexdigest()


def reference_logps(model, rows: list[DatasetRow], *, cache_dir: Path, ref_digest: str, dataset_sha: str, kind: str,
                    split: str, max_len: int, say: Callable[[str], None]) -> np.ndarray:
    """Reference log-probs of `rows`, from the cache or computed now with `model` (in eval mode)."""
    import mlx.core as mx

    key = hashlib.sha256(f"{REFERENCE_VERSION} {ref_digest} {dataset_sha} {kind} {split} {max_len}".encode()).hexdigest()
    file = cache_dir / f"{key[:32]}.safetensors"
    ids = _ids_hash(rows)
    if file.exists():
        arrays, meta = mx.load(str(file), return_metadata=True)
        if meta.get("reference_digest") != ref_digest or meta.get("rows") != ids:
            raise ReferenceMismatch(
                f"{file}: cached reference log-probs were computed for reference {meta.get('reference_digest', '?')[:12]} "
                f"and other rows, not for reference {ref_digest[:12]} and this dataset's {split} {kind} rows; "
                "delete the file to recompute it"
            )
        values = np.array(arrays["logps"], dtype=np.float32)
        if values.shape != (len(rows),):
            raise ReferenceMismatch(f"{file}: holds {values.shape[0]} reference log-probs for {len(rows)} rows")
        return values
    say(f"reference: scoring {len(rows)} {split} {kind} rows once (cached in {cache_dir})")
    model.eval()
    values = sequence_logps(model, rows, max_len)
    model.train()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.stem}.partial.safetensors")
    mx.save_safetensors(str(tmp), {"logps": mx.array(values)}, metadata={"reference_digest": ref_digest, "rows": ids})
    tmp.replace(file)
    return values


# --- losses ----------------------------------------------------------------------------


def _sft_term(token_logps, weights, mask, keep):
    """Token-mean cross entropy over the rows where `keep` (B,) is 1."""
    import mlx.core as mx

    keep = keep[:, None]
    return -(token_logps * weights * keep).sum() / mx.maximum((mask * keep).sum(), 1)


def kto_loss(model, inputs, targets, weights, mask, ref, sign, *, beta, desirable_weight, undesirable_weight, sft, batch_z0=False):
    """KTO over a batch of desirable (sign 1) and undesirable (sign 0) rows; see the module doc."""
    import mlx.core as mx

    token_logps = losses.token_logps(model, inputs, targets)
    r = (token_logps * mask).sum(-1) - ref
    z0 = mx.stop_gradient(mx.maximum(r.mean(), 0.0)) if batch_z0 else 0.0
    desirable = desirable_weight * (1 - mx.sigmoid(beta * (r - z0)))
    undesirable = undesirable_weight * (1 - mx.sigmoid(beta * (z0 - r)))
    loss = mx.where(sign > 0, desirable, undesirable).mean()
    if sft:
        loss = loss + sft * _sft_term(token_logps, weights, mask, sign)
    return loss, mask.sum()


def dpo_loss(model, inputs, targets, weights, mask, ref, *, beta, sft):
    """DPO over B chosen rows followed by their B rejected rows; see the module doc."""
    import mlx.core as mx
    import mlx.nn as nn

    token_logps = losses.token_logps(model, inputs, targets)
    r = (token_logps * mask).sum(-1) - ref
    half = r.shape[0] // 2
    margin = r[:half] - r[half:]
    loss = -nn.log_sigmoid(beta * margin).mean()
    if sft:
        chosen = (mx.arange(r.shape[0]) < half).astype(mx.float32)
        loss = loss + sft * _sft_term(token_logps, weights, mask, chosen)
    return loss, mask.sum()


def _arrays(ref: np.ndarray, sign: np.ndarray | None) -> Callable[[Batch], tuple]:
    import mlx.core as mx

    def arrays(batch: Batch) -> tuple:
        idx = _row_index(batch)
        inputs, targets, weights, mask, _ = losses.batch_arrays(batch)
        out = (inputs, targets, weights, mask, mx.array(ref[idx]))
        return out if sign is None else (*out, mx.array(sign[idx]))

    return arrays


# --- the run's objective ---------------------------------------------------------------


@dataclass
class Prepared:
    objective: Objective
    train: BatchPlan
    val: list[Batch]
    counts: dict[str, float]


def _usable(rows: list[DatasetRow], split: str, vocab: int) -> list[DatasetRow]:
    return check_rows(rows, split, vocab) if rows else []


def prepare(model, method: str, cfg: TrainingConfig, dataset: Dataset, *, vocab: int, seed: int, ref_digest: str,
            say: Callable[[str], None]) -> Prepared:
    """Rows, batches, cached reference log-probs and the loss of a preference run.

    `model` must be the starting weights (adapters attached and still zero, or the initial
    adapter loaded): it is the reference."""
    name = dataset.manifest.name
    cache = dict(cache_dir=dataset.path / REFERENCE_DIR, ref_digest=ref_digest, dataset_sha=dataset.manifest_sha256,
                 max_len=cfg.max_seq_length, say=say)
    sft = sft_weight(method, cfg)
    if method in ("kto", "kto-sft"):
        splits = {}
        for split in ("train", "valid"):
            good = _usable(dataset.rows(split), split, vocab)
            bad = _usable(dataset.undesirable(split), f"{split} undesirable", vocab)
            splits[split] = (good, bad)
        good, bad = splits["train"]
        if not good or not bad:
            missing = "undesirable (failed episodes)" if good else "desirable (successful episodes)"
            raise PreferenceDataError(
                f"{method} needs desirable and undesirable training rows; dataset {name} has {len(good)} desirable and "
                f"{len(bad)} undesirable, so every example is one class (no {missing} rows). Failed episodes enter the "
                "dataset when the label stage drops them with a reward; or train with --method lora"
            )
        plans, refs = {}, {}
        for split, (g, b) in splits.items():
            rows = g + b
            if not rows:
                continue
            plans[split] = BatchPlan(rows, cfg.batch_size, cfg.max_seq_length, False, seed)
            sign = np.asarray([1.0] * len(g) + [0.0] * len(b), np.float32)
            refs[split] = (reference_logps(model, rows, kind="kto", split=split, **cache), sign)
        loss = partial(kto_loss, beta=cfg.pref_beta, desirable_weight=cfg.kto_desirable_weight,
                       undesirable_weight=cfg.kto_undesirable_weight, sft=sft,
                       batch_z0=cfg.kto_reference_point == "batch")
        counts = {"desirable_rows": float(len(good)), "undesirable_rows": float(len(bad))}
    elif method == "dpo":
        plans, refs = {}, {}
        for split in ("train", "valid"):
            pairs = [p for p in dataset.pairs(split) if p.chosen_ids and p.rejected_ids]
            if not pairs:
                continue
            rows = pair_rows(pairs)
            check_rows(rows, f"{split} pairs", vocab)  # ids within the vocabulary
            plans[split] = PairPlan(rows, cfg.batch_size, cfg.max_seq_length, False, seed)
            refs[split] = (reference_logps(model, rows, kind="dpo", split=split, **cache), None)
        if "train" not in plans:
            raise PreferenceDataError(
                f"dpo needs preference pairs and dataset {name} has no training pairs (the dataset stage writes them when "
                "the same prompt got answers whose rewards differ by at least pair_margin); use --method kto for "
                "unpaired successes and failures"
            )
        loss = partial(dpo_loss, beta=cfg.pref_beta, sft=sft)
        counts = {"pairs": float(len(plans["train"].rows) // 2)}
    else:
        raise ValueError(f"not a preference method: {method!r}")
    val = plans["valid"].fixed(cfg.val_batches) if "valid" in plans else []
    objective = Objective(
        loss=loss,
        arrays=_arrays(*refs["train"]),
        val_arrays=_arrays(*refs["valid"]) if "valid" in refs else None,
    )
    return Prepared(objective=objective, train=plans["train"], val=val, counts=counts)


__all__ = ["prepare", "pair_rows", "sequence_logps", "reference_digest", "kto_loss", "dpo_loss"]
