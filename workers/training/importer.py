"""Bring your own data: mlx-lm's JSONL formats -> token-id dataset rows, tokenized once.

Formats (as `mlx_lm.lora` reads them):
- chat / tools: {"messages": [...], "tools": [...]?} rendered with the model's chat template;
- completions:  {"prompt": ..., "completion": ...}, i.e. one user and one assistant turn;
- text:         {"text": ...}, every token trained (mlx-lm's meaning of a plain text row).
For preference training (TRL's conventions):
- any of the above with "label": false is an undesirable example (a failure, for KTO);
- {"messages": [...prompt turns], "tools"?, "chosen": {assistant message}, "rejected": {...}}
  is a preference pair (for DPO): two answers to the same rendered prompt.
The loss mask follows the runtime's rule: 1 only on what the model itself would sample,
i.e. each assistant turn's content up to and including its end-of-turn token, never the
role header, the template's trailing newline, system, user or tool text.

A turn is located by rendering the conversation up to it; when a template does not
reproduce earlier turns as a prefix (some rewrite history, e.g. strip reasoning), that
turn stays masked out rather than being trained on ids that never appear.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.dataset import DatasetFile, DatasetManifest, DatasetRow, PreferencePair
from tinygpt.runtime.contracts.io import atomic_write_bytes, write_json

from .data import MANIFEST, trainable_tokens
from .errors import DatasetFormatError, EmptyDatasetError

SPLITS = ("train", "valid", "test")


@dataclass
class ImportStats:
    rows: int = 0
    # Rows with "label": false (undesirable examples).
    failures: int = 0
    skipped_turns: int = 0
    formats: dict[str, int] = field(default_factory=dict)


def _render(tokenizer, messages, tools, generation_prompt: bool = False) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
    )
    return list(ids)


def _sampled_end(ids: list[int], start: int, end: int, eos_ids: set[int]) -> int:
    """End of what the model samples in ids[start:end]: through the last EOS, if any."""
    for i in range(end - 1, start - 1, -1):
        if ids[i] in eos_ids:
            return i + 1
    return end


def chat_row(tokenizer, messages: list[dict], tools: list | None, stats: ImportStats) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of one conversation: the full rendering, assistant turns masked in."""
    ids = _render(tokenizer, messages, tools)
    mask = [0] * len(ids)
    eos_ids = set(tokenizer.eos_token_ids)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:i], tools, generation_prompt=True) if i else []
        through = _render(tokenizer, messages[: i + 1], tools)
        start, end = len(before), len(through)
        if ids[:start] != before or ids[:end] != through or start >= end:
            stats.skipped_turns += 1
            continue
        for j in range(start, _sampled_end(ids, start, end, eos_ids)):
            mask[j] = 1
    return ids, mask


def record_row(tokenizer, record: dict, stats: ImportStats) -> tuple[list[int], list[int]]:
    """Detect the record's format (like mlx-lm's `create_dataset`) and tokenize it."""
    if "messages" in record:
        kind = "tools" if record.get("tools") else "chat"
        ids, mask = chat_row(tokenizer, record["messages"], record.get("tools"), stats)
    elif "prompt" in record and "completion" in record:
        kind = "completions"
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
        ids, mask = chat_row(tokenizer, messages, record.get("tools"), stats)
    elif "text" in record:
        kind = "text"
        ids = list(tokenizer.encode(record["text"]))
        if not ids or ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
        mask = [1] * len(ids)
    else:
        raise DatasetFormatError(
            f"unsupported record with keys {sorted(record)}: expected messages (chat/tools), prompt+completion, or text"
        )
    stats.formats[kind] = stats.formats.get(kind, 0) + 1
    return ids, mask


def pair_record(tokenizer, record: dict, row_id: str, split: str, stats: ImportStats) -> PreferencePair:
    """A {"messages", "chosen", "rejected"} record as a pair over the rendered prompt's ids."""
    messages, tools = record.get("messages"), record.get("tools")
    if not isinstance(messages, list) or not all(isinstance(record[k], dict) for k in ("chosen", "rejected")):
        raise DatasetFormatError("a pair record needs `messages` (the prompt turns) and `chosen` / `rejected` assistant messages")
    prompt = _render(tokenizer, messages, tools, generation_prompt=True)
    answers = []
    for key in ("chosen", "rejected"):
        ids, mask = chat_row(tokenizer, [*messages, {"role": "assistant", **record[key]}], tools, stats)
        if ids[: len(prompt)] != prompt:
            raise DatasetFormatError(f"pair {row_id}: the template does not render the prompt as a prefix of the {key} answer")
        answers.append([t for t, m in zip(ids[len(prompt) :], mask[len(prompt) :]) if m])
    stats.formats["pairs"] = stats.formats.get("pairs", 0) + 1
    return PreferencePair(
        id=row_id, prompt_ids=prompt, chosen_ids=answers[0], rejected_ids=answers[1],
        chosen_reward=float(record.get("chosen_reward", 1.0)), rejected_reward=float(record.get("rejected_reward", 0.0)),
        chosen_trajectory="", rejected_trajectory="", split=split,
    )


def _split_of(line: bytes, seed: int, valid_fraction: float, test_fraction: float) -> str:
    # By content hash, so re-importing the same file (even reordered) gives the same split.
    u = int.from_bytes(hashlib.sha256(f"{seed}:".encode() + line).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"


def read_sources(src: Path, seed: int, valid_fraction: float, test_fraction: float) -> dict[str, list[bytes]]:
    """Raw JSONL lines per split: a directory's train/valid/test.jsonl, or one file split by hash."""
    if src.is_dir():
        files = {s: src / f"{s}.jsonl" for s in SPLITS if (src / f"{s}.jsonl").exists()}
        if "train" not in files:
            raise DatasetFormatError(f"{src} has no train.jsonl")
        return {s: [l for l in f.read_bytes().splitlines() if l.strip()] for s, f in files.items()}
    lines = [l for l in src.read_bytes().splitlines() if l.strip()]
    out: dict[str, list[bytes]] = {}
    for line in lines:
        out.setdefault(_split_of(line, seed, valid_fraction, test_fraction), []).append(line)
    return out


def _write_lines(out: Path, name: str, records: list) -> DatasetFile:
    data = b"".join(msgspec.json.encode(r) + b"\n" for r in records)
    atomic_write_bytes(out / name, data)
    return DatasetFile(path=name, sha256=hashlib.sha256(data).hexdigest(), rows=len(records))


def write_dataset(out: Path, name: str, splits: dict[str, list[DatasetRow]], base_model: str, base_digest: str,
                  pairs: list[PreferencePair] | None = None) -> DatasetManifest:
    """Write rows as `<split>.jsonl` (+ `pairs.jsonl`) plus `manifest.json` (last: its presence means complete)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {split: _write_lines(out, f"{split}.jsonl", rows) for split, rows in sorted(splits.items())}
    pair_file = _write_lines(out, "pairs.jsonl", pairs) if pairs else None
    listed = {**files, **({"pairs": pair_file} if pair_file else {})}
    digest = hashlib.sha256("".join(f"{s} {f.sha256}\n" for s, f in sorted(listed.items())).encode()).hexdigest()
    every = [r for rows in splits.values() for r in rows]
    manifest = DatasetManifest(
        name=name,
        digest=digest,
        base_model=base_model,
        base_digest=base_digest,
        splits=files,
        rows=len(every),
        tokens=sum(len(r.input_ids) for r in every),
        trained_tokens=sum(trainable_tokens(r) for r in every),
        created_at=time.time(),
        pairs=pair_file,
    )
    write_json(out / MANIFEST, manifest)
    return manifest


def import_jsonl(
    src: Path, tokenizer, out: Path, *, base_model: str, base_digest: str, name: str | None = None,
    valid_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0,
) -> tuple[DatasetManifest, ImportStats]:
    """Tokenize `src` once with `tokenizer` and write a dataset directory at `out`."""
    stats = ImportStats()
    splits: dict[str, list[DatasetRow]] = {}
    pairs: list[PreferencePair] = []
    for split, lines in read_sources(Path(src), seed, valid_fraction, test_fraction).items():
        for n, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFormatError(f"{src}: {split} line {n} is not JSON ({e})") from None
            if not isinstance(record, dict):
                raise DatasetFormatError(f"{src}: {split} line {n} is not a JSON object")
            row_id = hashlib.sha256(line).hexdigest()[:20]
            if "chosen" in record or "rejected" in record:
                pairs.append(pair_record(tokenizer, record, row_id, split, stats))
                continue
            desirable = record.get("label", True)
            if not isinstance(desirable, bool):
                raise DatasetFormatError(f"{src}: {split} line {n}: `label` must be true or false (desirable or not)")
            ids, mask = record_row(tokenizer, record, stats)
            row = DatasetRow(id=row_id, input_ids=ids, loss_mask=mask, split=split, desirable=desirable)
            splits.setdefault(split, []).append(row)
            stats.rows += 1
            stats.failures += not desirable
    if not any(r.desirable for r in splits.get("train", [])) and not any(p.split == "train" for p in pairs):
        raise EmptyDatasetError(f"{src}: no training rows (an empty file, or every row went to valid/test)")
    manifest = write_dataset(Path(out), name or Path(src).stem, splits, base_model, base_digest, pairs)
    return manifest, stats
