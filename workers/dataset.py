"""Stage 4, dataset: training rows straight from recorded token ids, split by trajectory.

Takes the current version of every trajectory of a project recorded on the job's base
model that dedupe kept and label kept, and writes

    <home>/datasets/<name>/<digest16>/{train,valid,test}.jsonl   DatasetRow per line
                                     pairs.jsonl                 PreferencePair per line
                                     undesirable.jsonl           failed episodes (KTO)
                                     dropped.jsonl               what was left out, and why
                                     manifest.json               paths relative to this dir
    <home>/datasets/<name>/manifest.json                         the latest build (written last)

Rows are `tokens.sequences` of each trajectory: loss mask 1 only on sampled tokens;
steps flagged `prefix_mismatch` or by the label stage's quality checks (cut off, a
loop, a repeated tool call) are context only, and so are steps with an invalid tool
call when the job says so. A build policy's job (`select`) takes only the trajectories
its selection matches, never every trajectory of the project. Each trajectory lands
in one split, chosen by a hash of its id and the seed, so no trajectory leaks across
splits and a trajectory keeps its split as the dataset grows. A build is named by the
hash of its contents: rebuilding from the same inputs reuses the same directory, and a
fine-tune names exactly what it trained on by that digest.

What preference training needs comes from the same trajectories: a failed episode (one
the label stage dropped while giving it a reward, i.e. it was judged, not merely
unlabelled) becomes undesirable rows (`desirable=False`, all sampled tokens masked in,
invalid tool calls included: they are what is undesirable), and each pair carries the
split of its chosen trajectory. Failed episodes take the split their id hashes to.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import msgspec
import redis

from tinygpt.queue import keys
from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts import atomic_write_bytes, write_json
from tinygpt.runtime.contracts.base import Contract
from tinygpt.runtime.contracts.dataset import DatasetFile, DatasetManifest, DatasetRow, PreferencePair, Split
from tinygpt.runtime.contracts.jobs import DatasetJob
from tinygpt.runtime.contracts.pipeline import DedupeRecord, FileRecord, LabelRecord
from tinygpt.runtime.contracts.project import NAME_PATTERN
from tinygpt.runtime.contracts.trajectory import Trajectory

from tinygpt.queue import store
from .ingest import current_sha, load
from .tokens import sequences

SPLITS: tuple[Split, ...] = ("train", "valid", "test")
MANIFEST = "manifest.json"
PAIRS_PER_PROMPT = 4
CHUNK = 1000


class DatasetResult(Contract):
    name: str
    digest: str
    path: str
    trajectories: int = 0
    rows: int = 0
    pairs: int = 0
    # Rows of failed episodes (for KTO).
    undesirable: int = 0
    dropped: dict[str, int] = {}
    # Trajectories not yet through dedupe or label when the build ran (not included).
    pending: int = 0


class _Entry(msgspec.Struct):
    file: FileRecord
    dedupe: DedupeRecord | None
    label: LabelRecord | None


def split_of(trajectory_id: str, seed: int, valid_fraction: float, test_fraction: float) -> Split:
    """A trajectory's split from a hash of its id: stable as the dataset grows."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{trajectory_id}".encode()).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + valid_fraction:
        return "valid"
    return "train"


def assign_splits(ids: list[str], job: DatasetJob) -> dict[str, Split]:
    """Splits for `ids`; a tiny dataset still gets one valid (2+) and one test (3+) trajectory."""
    out = {tid: split_of(tid, job.seed, job.valid_fraction, job.test_fraction) for tid in ids}
    order = sorted(ids, key=lambda t: hashlib.sha256(f"{job.seed}:{t}".encode()).digest())
    for split, needed, wanted in (("valid", 2, job.valid_fraction), ("test", 3, job.test_fraction)):
        if wanted > 0 and len(ids) >= needed and split not in out.values():
            movable = [t for t in order if out[t] == "train"]
            if len(movable) > 1:
                out[movable[0]] = split
    return out


def _entries(conn: redis.Redis, project: str) -> list[_Entry]:
    shas = [current_sha(v) for v in conn.hvals(keys.versions(project))]
    found: list[_Entry] = []
    for start in range(0, len(shas), CHUNK):
        chunk = shas[start : start + CHUNK]
        with conn.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.files(), chunk)
            pipe.hmget(keys.dedupe(project), chunk)
            pipe.hmget(keys.labels(project), chunk)
            files, dedupes, labels = pipe.execute()
        for f, d, lab in zip(files, dedupes, labels):
            if f is None:
                continue
            found.append(
                _Entry(
                    file=msgspec.msgpack.decode(f, type=FileRecord),
                    dedupe=msgspec.msgpack.decode(d, type=DedupeRecord) if d else None,
                    label=msgspec.msgpack.decode(lab, type=LabelRecord) if lab else None,
                )
            )
    return found


def _why_not(entry: _Entry, job: DatasetJob) -> str | None:
    """The reason an entry is not a training row (None: it is one)."""
    if entry.dedupe is None:
        return "pending_dedupe"
    if entry.dedupe.verdict in ("exact", "near"):
        return f"{entry.dedupe.verdict}_duplicate"
    if entry.dedupe.verdict == "superseded":
        return "superseded"
    if entry.label is None:
        return "pending_label"
    if not entry.label.keep:
        opted_in = job.select is not None and job.select.keep_unlabelled and entry.label.no_signal
        return None if opted_in else "label_drop"
    return None


def selected(entry: _Entry, job: DatasetJob) -> bool:
    """Whether the job's selection takes this entry (no selection, or no label yet: it does)."""
    if job.select is None or entry.label is None:
        return True
    lab = entry.label
    return job.select.matches(project=entry.file.project, served_by=lab.served_by, tools=lab.tools, tags=lab.tags)


class _Writer:
    """JSON lines into one file, hashing as it goes."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.hash = hashlib.sha256()
        self.rows = 0
        self.encoder = msgspec.json.Encoder()

    def write(self, record: Contract) -> None:
        line = self.encoder.encode(record) + b"\n"
        self.file.write(line)
        self.hash.update(line)
        self.rows += 1

    def close(self) -> DatasetFile:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return DatasetFile(path=self.path.name, sha256=self.hash.hexdigest(), rows=self.rows)


def _pairs(entries: list[_Entry], margin: float, writer: _Writer, split: Callable[[str], Split]) -> int:
    """Chosen / rejected answers to the same step prompt whose rewards differ by `margin`."""
    groups: dict[str, list[tuple[float, int, _Entry]]] = defaultdict(list)
    for e in entries:
        if e.label is None or e.label.reward is None:
            continue
        for step, key in enumerate(e.label.prompt_keys):
            groups[key].append((e.label.reward, step, e))
    loaded: dict[str, Trajectory] = {}

    def traj(e: _Entry) -> Trajectory:
        if e.file.sha256 not in loaded:
            loaded[e.file.sha256] = load(e.file)
        return loaded[e.file.sha256]

    count = 0
    for key in sorted(groups):
        answers = groups[key]
        if len({a[2].file.trajectory_id for a in answers}) < 2:
            continue
        answers.sort(key=lambda a: (-a[0], a[2].file.trajectory_id))
        best_reward, best_step, best = answers[0]
        chosen = traj(best).steps[best_step]
        made = 0
        for reward, step, other in reversed(answers[1:]):
            if made >= PAIRS_PER_PROMPT or best_reward - reward < margin:
                break
            if other.file.trajectory_id == best.file.trajectory_id:
                continue
            rejected = traj(other).steps[step]
            if rejected.output_ids == chosen.output_ids:
                continue
            pair_id = hashlib.sha256(f"{best.file.sha256}:{best_step}:{other.file.sha256}:{step}".encode()).hexdigest()[:24]
            writer.write(
                PreferencePair(
                    id=pair_id,
                    prompt_ids=chosen.prompt_ids,
                    chosen_ids=chosen.output_ids,
                    rejected_ids=rejected.output_ids,
                    chosen_reward=best_reward,
                    rejected_reward=reward,
                    chosen_trajectory=best.file.trajectory_id,
                    rejected_trajectory=other.file.trajectory_id,
                    split=split(best.file.trajectory_id),
                )
            )
            made += 1
        count += made
        if len(loaded) > 4096:
            loaded.clear()  # pairs are rare; keep memory flat on big projects
    return count


def _digest(manifest: DatasetManifest) -> str:
    content = {
        "base_model": manifest.base_model,
        "base_digest": manifest.base_digest,
        "splits": {k: v.sha256 for k, v in sorted(manifest.splits.items())},
        "pairs": manifest.pairs.sha256 if manifest.pairs else None,
        # Only when present, so datasets without failures keep their version-1 digest.
        **({"undesirable": manifest.undesirable.sha256} if manifest.undesirable else {}),
    }
    return hashlib.sha256(msgspec.json.encode(content)).hexdigest()


def _relative(manifest: DatasetManifest, prefix: str) -> DatasetManifest:
    def move(f: DatasetFile) -> DatasetFile:
        return msgspec.structs.replace(f, path=f"{prefix}/{f.path}")

    return msgspec.structs.replace(
        manifest,
        splits={k: move(v) for k, v in manifest.splits.items()},
        pairs=move(manifest.pairs) if manifest.pairs else None,
        undesirable=move(manifest.undesirable) if manifest.undesirable else None,
    )


def run(job: DatasetJob, conn: redis.Redis) -> DatasetResult:
    """Build (or find, when nothing changed) the dataset `job.name`."""
    if not re.match(NAME_PATTERN, job.name):
        raise PermanentError(f"dataset name {job.name!r} must be lower-case a-z, 0-9, '.', '_', '-' (at most 64)")
    if job.valid_fraction + job.test_fraction >= 1.0:
        raise PermanentError(f"valid_fraction + test_fraction must be below 1, got {job.valid_fraction} + {job.test_fraction}")
    try:
        entries = _entries(conn, job.project)
    except ValueError as e:  # an invalid project name
        raise PermanentError(str(e)) from None

    dropped: Counter[str] = Counter()
    drop_notes: list[dict] = []
    chosen = [e for e in entries if selected(e, job)]
    dropped["not_selected"] = len(entries) - len(chosen)
    on_base = [e for e in chosen if e.file.base_model == job.base_model]
    dropped["other_base_model"] = len(chosen) - len(on_base)
    if not on_base:
        which = "trajectories the build policy selects" if job.select is not None else "ingested trajectories"
        raise PermanentError(f"project {job.project!r} has no {which} recorded on {job.base_model!r}")
    digests = Counter(e.file.base_digest for e in on_base)
    base_digest = digests.most_common(1)[0][0]
    kept: list[_Entry] = []
    pending = 0
    for e in sorted(on_base, key=lambda e: e.file.trajectory_id):
        reason = _why_not(e, job) if e.file.base_digest == base_digest else "other_base_digest"
        if reason is None:
            kept.append(e)
            continue
        if reason.startswith("pending"):
            pending += 1
        dropped[reason] += 1
        detail = e.label.reason if reason == "label_drop" and e.label else ""
        if e.dedupe is not None and reason.endswith("_duplicate"):
            detail = f"of {e.dedupe.of} (similarity {e.dedupe.similarity:.2f})"
        drop_notes.append({"trajectory_id": e.file.trajectory_id, "sha256": e.file.sha256, "reason": reason, "detail": detail})
    if not kept:
        raise PermanentError(
            f"no trajectory of project {job.project!r} on {job.base_model!r} is kept ({dict(+dropped)}); nothing to train on"
        )

    root = store.datasets_dir() / job.name
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        manifest = _write(job, kept, on_base, base_digest, dropped, drop_notes, tmp)
        digest = _digest(manifest)
        final = root / digest[:16]
        if final.is_dir() and (final / MANIFEST).is_file():
            # Same contents as an earlier build: keep that one (and its created_at).
            shutil.rmtree(tmp)
            manifest = msgspec.json.decode((final / MANIFEST).read_bytes(), type=DatasetManifest)
        else:
            manifest = msgspec.structs.replace(manifest, digest=digest)
            write_json(tmp / MANIFEST, manifest)  # last inside the build: marks it complete
            if final.exists():
                shutil.rmtree(final)  # a build that died before its manifest
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest = _relative(manifest, final.name)
    write_json(root / MANIFEST, latest)
    conn.hset(keys.datasets(), job.name, msgspec.msgpack.encode(latest))
    return DatasetResult(
        name=job.name,
        digest=manifest.digest,
        path=str(final),
        trajectories=manifest.trajectories,
        rows=manifest.rows,
        pairs=manifest.pairs.rows if manifest.pairs else 0,
        undesirable=manifest.undesirable.rows if manifest.undesirable else 0,
        dropped=dict(manifest.dropped),
        pending=pending,
    )


def _write(
    job: DatasetJob,
    kept: list[_Entry],
    on_base: list[_Entry],
    base_digest: str,
    dropped: Counter,
    drop_notes: list[dict],
    tmp: Path,
) -> DatasetManifest:
    splits = assign_splits([e.file.trajectory_id for e in kept], job)
    writers = {s: _Writer(tmp / f"{s}.jsonl") for s in SPLITS}
    tokens = trained = 0
    for e in kept:
        traj = load(e.file)
        masked = set(e.label.invalid_steps) if (job.mask_invalid_tool_calls and e.label) else set()
        masked |= set(e.label.flags) if e.label else set()
        split = splits[traj.id]
        for seq in sequences(traj, masked):
            writers[split].write(
                DatasetRow(
                    id=f"{e.file.sha256[:16]}-{seq.step}",
                    input_ids=seq.input_ids,
                    loss_mask=seq.loss_mask,
                    trajectory_id=traj.id,
                    step=seq.step,
                    split=split,
                    reward=e.label.reward if e.label else None,
                )
            )
            tokens += len(seq.input_ids)
            trained += seq.trained
    files = {s: w.close() for s, w in writers.items()}

    def split_for(tid: str) -> Split:
        return splits.get(tid) or split_of(tid, job.seed, job.valid_fraction, job.test_fraction)

    same_base = [e for e in on_base if e.dedupe is not None and e.file.base_digest == base_digest]
    bad_writer = _Writer(tmp / "undesirable.jsonl")
    for e in same_base:
        if e.dedupe.verdict == "kept" and e.label is not None and not e.label.keep and e.label.reward is not None:
            traj = load(e.file)
            for seq in sequences(traj):
                bad_writer.write(
                    DatasetRow(
                        id=f"{e.file.sha256[:16]}-{seq.step}", input_ids=seq.input_ids, loss_mask=seq.loss_mask,
                        trajectory_id=traj.id, step=seq.step, split=split_for(traj.id), desirable=False,
                        reward=e.label.reward,
                    )
                )
    undesirable = bad_writer.close()
    if not undesirable.rows:
        (tmp / "undesirable.jsonl").unlink()
    pair_writer = _Writer(tmp / "pairs.jsonl")
    # Rejected answers come from label-dropped trajectories too: that is their use.
    candidates = [e for e in same_base if e.dedupe.verdict in ("kept", "near")]
    _pairs(candidates, job.pair_margin, pair_writer, split_for)
    pairs = pair_writer.close()
    if not pairs.rows:
        (tmp / "pairs.jsonl").unlink()
    atomic_write_bytes(tmp / "dropped.jsonl", b"".join(msgspec.json.encode(n) + b"\n" for n in drop_notes))
    return DatasetManifest(
        name=job.name,
        digest="",
        base_model=job.base_model,
        base_digest=base_digest,
        splits=files,
        trajectories=len(kept),
        rows=sum(f.rows for f in files.values()),
        tokens=tokens,
        trained_tokens=trained,
        created_at=time.time(),
        project=job.project,
        pairs=pairs if pairs.rows else None,
        undesirable=undesirable if undesirable.rows else None,
        dropped={k: v for k, v in sorted(dropped.items()) if v},
        sources=sorted(e.file.sha256 for e in kept),
    )
