"""Dataset rows in, batches out: the only place that reads a dataset directory.

A dataset directory (written by the pipeline's dataset stage or `tinygpt dataset import`)
holds a `DatasetManifest` and row files it names by content hash. Rows are token ids and
a loss mask, used as recorded: nothing here decodes or re-tokenizes text.

Batches are plain numpy arrays (the loop turns them into `mx` arrays), planned from the
seed and the epoch alone so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from tinygpt.runtime.contracts.base import ContractError
from tinygpt.runtime.contracts.dataset import DatasetFile, DatasetManifest, DatasetRow, PreferencePair
from tinygpt.runtime.hashing import sha256_file
from tinygpt.runtime.contracts.io import read_json

from .errors import DatasetFormatError, EmptyDatasetError

MANIFEST = "manifest.json"
# Inputs are padded to a multiple of this, so the compiled step sees few distinct shapes.
PAD_MULTIPLE = 32


@dataclass
class Dataset:
    """A loaded dataset directory: its manifest and rows grouped by split."""

    path: Path
    manifest: DatasetManifest
    manifest_sha256: str
    splits: dict[str, list[DatasetRow]]
    # Failed episodes (desirable=False) and preference pairs, by split (preference methods).
    undesirable_splits: dict[str, list[DatasetRow]] = field(default_factory=dict)
    pair_splits: dict[str, list[PreferencePair]] = field(default_factory=dict)

    def rows(self, split: str) -> list[DatasetRow]:
        return self.splits.get(split, [])

    def undesirable(self, split: str) -> list[DatasetRow]:
        return self.undesirable_splits.get(split, [])

    def pairs(self, split: str) -> list[PreferencePair]:
        return self.pair_splits.get(split, [])


def _read_rows(path: Path, kind: type = DatasetRow) -> list:
    """Records from `.jsonl` (one per line) or `.msgpack` / `.mpk` (an array of them)."""
    try:
        if path.suffix in (".msgpack", ".mpk"):
            return msgspec.msgpack.decode(path.read_bytes(), type=list[kind])
        decoder = msgspec.json.Decoder(kind)
        with open(path, "rb") as f:
            return [decoder.decode(line) for line in f if line.strip()]
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise DatasetFormatError(f"{path}: not a file of {kind.__name__} records ({e})") from None


def _checked_file(path: Path, manifest_path: Path, entry: DatasetFile, what: str) -> Path:
    file = path / entry.path
    if not file.is_file():
        raise DatasetFormatError(f"{manifest_path}: {what} names {entry.path}, which is missing")
    if entry.sha256 and sha256_file(file) != entry.sha256:
        raise DatasetFormatError(f"{file}: sha256 does not match the manifest (changed after it was written)")
    return file


def _check_row(file: Path, row: DatasetRow) -> None:
    if len(row.input_ids) != len(row.loss_mask):
        raise DatasetFormatError(f"{file}: row {row.id} has {len(row.input_ids)} ids but {len(row.loss_mask)} mask entries")


def load_dataset(path: str | Path) -> Dataset:
    """Read and check a dataset directory; rows are grouped by their own `split` field.

    Every row file must match the sha256 the manifest records for it, so the digest in a
    training record names exactly the rows that were trained on.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = read_json(manifest_path, DatasetManifest)
    except ContractError as e:
        raise DatasetFormatError(f"not a dataset directory: {e}") from None
    splits: dict[str, list[DatasetRow]] = {}
    undesirable: dict[str, list[DatasetRow]] = {}
    for name, entry in sorted(manifest.splits.items()):
        file = _checked_file(path, manifest_path, entry, f"split {name!r}")
        for row in _read_rows(file):
            _check_row(file, row)
            # SFT trains on desirable rows only; a failed one in a split file is a KTO example.
            (splits if row.desirable else undesirable).setdefault(row.split, []).append(row)
    if manifest.undesirable is not None:
        file = _checked_file(path, manifest_path, manifest.undesirable, "undesirable")
        for row in _read_rows(file):
            _check_row(file, row)
            undesirable.setdefault(row.split, []).append(msgspec.structs.replace(row, desirable=False))
    pairs: dict[str, list[PreferencePair]] = {}
    if manifest.pairs is not None:
        file = _checked_file(path, manifest_path, manifest.pairs, "pairs")
        for pair in _read_rows(file, PreferencePair):
            pairs.setdefault(pair.split, []).append(pair)
    return Dataset(
        path=path, manifest=manifest, manifest_sha256=sha256_file(manifest_path), splits=splits,
        undesirable_splits=undesirable, pair_splits=pairs,
    )


def trainable_tokens(row: DatasetRow) -> int:
    """Tokens the loss sees: masked-in positions after the first (token 0 has no context)."""
    return sum(row.loss_mask[1:])


def check_rows(rows: list[DatasetRow], split: str, vocab_size: int) -> list[DatasetRow]:
    """The rows that carry a training signal; a clear error when none do.

    Rows with no trainable token are dropped (they would only cost compute); an id outside
    the model's vocabulary means the dataset was built for another tokenizer.
    """
    if not rows:
        raise EmptyDatasetError(f"the {split} split has no rows")
    for row in rows:
        bad = [i for i in row.input_ids if not 0 <= i < vocab_size]
        if bad:
            raise DatasetFormatError(
                f"row {row.id}: token id {bad[0]} is outside the model's vocabulary ({vocab_size}); "
                "was the dataset built for another base model?"
            )
    kept = [r for r in rows if trainable_tokens(r) > 0]
    if not kept:
        raise EmptyDatasetError(
            f"every one of the {len(rows)} {split} rows is fully masked (loss_mask has no 1 after the first "
            "token), so there is nothing to learn"
        )
    return kept


@dataclass
class Batch:
    """B sequences of equal padded length L. `inputs[b, t]` predicts `targets[b, t]`.

    `weights` is loss mask x row weight per target (0 on padding and where a packed row
    begins); `segments` is None unless rows were packed (then 1, 2, ... per row, 0 on
    padding); `placements[b]` lists (row index, start, length) of each row in sequence b.
    """

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    mask: np.ndarray
    segments: np.ndarray | None
    placements: list[list[tuple[int, int, int]]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Trained (masked-in) targets."""
        return int(self.mask.sum())

    @property
    def input_tokens(self) -> int:
        """Real (non-padding) positions fed to the model."""
        return sum(n - 1 for placed in self.placements for _, _, n in placed)


def _padded_length(n: int, cap: int) -> int:
    return min(cap, PAD_MULTIPLE * -(-n // PAD_MULTIPLE))


def _plan_epoch(lengths: list[int], batch_size: int, max_len: int, pack: bool, rng) -> list[list[list[int]]]:
    """Row indices per sequence per batch for one epoch (order only, no arrays)."""
    order = list(rng.permutation(len(lengths))) if rng is not None else list(range(len(lengths)))
    if pack:
        sequences, current, used = [], [], 0
        for i in order:
            n = min(lengths[i], max_len)
            if current and used + n > max_len:
                sequences.append(current)
                current, used = [], 0
            current.append(int(i))
            used += n
        if current:
            sequences.append(current)
    else:
        # Like mlx-lm: neighbours by length share a batch, so little is spent on padding.
        order.sort(key=lambda i: lengths[i])
        sequences = [[int(i)] for i in order]
    batches = [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]
    if rng is not None and not pack:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(rows: list[DatasetRow], plan: list[list[int]], max_len: int, pack: bool) -> Batch:
    """Lay the planned rows out as arrays; rows longer than `max_len` are cut at the end."""
    seqs = []
    for indices in plan:
        ids, mask, weight, segs, place = [], [], [], [], []
        for k, i in enumerate(indices, start=1):
            row = rows[i]
            n = min(len(row.input_ids), max_len)
            place.append((i, len(ids), n))
            ids += row.input_ids[:n]
            m = list(row.loss_mask[:n])
            # A packed row's first token is predicted from the previous row: never a target.
            m[0] = 0
            mask += m
            weight += [row.weight] * n
            segs += [k] * n
        seqs.append((ids, mask, weight, segs, place))
    length = _padded_length(max(len(s[0]) for s in seqs) - 1, max_len)
    B = len(seqs)
    inputs = np.zeros((B, length), np.int32)
    targets = np.zeros((B, length), np.int32)
    mask = np.zeros((B, length), np.float32)
    weights = np.zeros((B, length), np.float32)
    segments = np.zeros((B, length), np.int32) if pack else None
    for b, (ids, m, w, segs, _) in enumerate(seqs):
        n = len(ids) - 1
        inputs[b, :n] = ids[:-1]
        targets[b, :n] = ids[1:]
        mask[b, :n] = m[1:]
        weights[b, :n] = np.asarray(m[1:], np.float32) * np.asarray(w[1:], np.float32)
        if segments is not None:
            segments[b, :n] = segs[:-1]
    return Batch(inputs, targets, weights, mask, segments, [s[4] for s in seqs])


@dataclass
class BatchPlan:
    """Deterministic batches over a split: epoch `e` is shuffled by (seed, e)."""

    rows: list[DatasetRow]
    batch_size: int
    max_len: int
    pack: bool
    seed: int
    lengths: list[int] = field(init=False)

    def __post_init__(self):
        self.lengths = [len(r.input_ids) for r in self.rows]

    def epoch(self, e: int, shuffle: bool = True) -> list[list[list[int]]]:
        rng = np.random.default_rng([self.seed, e]) if shuffle else None
        return _plan_epoch(self.lengths, self.batch_size, self.max_len, self.pack, rng)

    def stream(self, skip: int = 0) -> Iterator[Batch]:
        """Training batches forever, starting after the first `skip` (for resume)."""
        e = 0
        while True:
            plan = self.epoch(e)
            if skip >= len(plan):
                skip -= len(plan)
            else:
                for batch in plan[skip:]:
                    yield self.collate(batch)
                skip = 0
            e += 1

    def fixed(self, limit: int = -1) -> list[Batch]:
        """Unshuffled batches for validation (the first `limit`, or all when -1)."""
        plan = self.epoch(0, shuffle=False)
        if limit >= 0:
            plan = plan[:limit]
        return [self.collate(batch) for batch in plan]

    def collate(self, plan: list[list[int]]) -> Batch:
        return collate(self.rows, plan, self.max_len, self.pack)

    @property
    def truncated(self) -> int:
        return sum(n > self.max_len for n in self.lengths)
