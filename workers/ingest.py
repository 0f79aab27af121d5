"""Stage 1, ingest: check each trajectory file against its contract and record it.

A file that does not decode (truncated mid-write, wrong types, unknown fields, newer
schema) or decodes but is inconsistent (logprobs cut short, tool results for calls
that never happened, token ids out of range) is quarantined with the reason: it stays
in the store for inspection, shows up in `tinygpt status`, and never reaches a
dataset. Only failures of the machinery (Redis, disk) raise, so RQ retries them.

Idempotent by content: a file whose sha256 already has a record is skipped, and all
writes for a chunk of files go through one MULTI, so a killed worker leaves either a
whole chunk recorded or none of it.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import redis

from tinygpt.queue import keys
from tinygpt.runtime.contracts import ContractError
from tinygpt.runtime.contracts.base import Contract
from tinygpt.runtime.contracts.jobs import IngestJob, TrajectoryRef
from tinygpt.runtime.contracts.pipeline import FileRecord
from tinygpt.runtime.contracts.trajectory import TRAJECTORY_VERSION, Trajectory

from tinygpt.queue import store

# Larger than any real vocabulary; a bigger id is corruption, not a token.
MAX_TOKEN_ID = 1 << 24
# Files recorded per MULTI: bounds both the memory of a batch and the redo after a kill.
CHUNK = 64
# `tinygpt status` lists the newest trajectories; older entries fall off this index.
RECENT_KEEP = 500
MAX_REASONS = 4

# Keeps the most complete version of a trajectory: the rank string sorts by steps, then
# tokens, then feedback items, then sha256, so concurrent ingests of two flushes of one
# session agree on the winner.
_SET_IF_HIGHER = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or ARGV[2] > cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class IngestResult(Contract):
    ingested: int = 0
    quarantined: int = 0
    skipped: int = 0
    # Quarantined file sha256 -> reason, for the job's result.
    reasons: dict[str, str] = {}


def version_rank(record: FileRecord) -> str:
    """Fixed-width, so string order is (steps, tokens, feedback, sha256) order."""
    return f"{record.steps:08d}{record.tokens:012d}{record.feedback:06d}{record.sha256}"


def current_sha(rank: bytes | str | None) -> str | None:
    """The sha256 inside a `versions` hash value."""
    if rank is None:
        return None
    text = rank.decode() if isinstance(rank, bytes) else rank
    return text[-64:]


def problems(traj: Trajectory) -> list[str]:
    """What makes a decoded trajectory unusable, in plain words (empty when it is fine)."""
    found: list[str] = []
    if not traj.id:
        found.append("empty trajectory id")
    if not traj.base_model:
        found.append("empty base_model")
    try:
        keys.versions(traj.project)
    except ValueError as e:
        found.append(str(e))
    if not traj.steps:
        found.append("no steps")
    call_ids: set[str] = set()
    for pos, step in enumerate(traj.steps):
        where = f"step {pos}"
        if step.index != pos:
            found.append(f"{where}: index is {step.index}, expected {pos}")
        if not step.prompt_ids:
            found.append(f"{where}: prompt_ids is empty")
        for ids in (step.prompt_ids, step.output_ids):
            # min / max run in C; the offending id is looked for only when there is one.
            if ids and (min(ids) < 0 or max(ids) >= MAX_TOKEN_ID):
                bad = next(t for t in ids if not 0 <= t < MAX_TOKEN_ID)
                found.append(f"{where}: token id {bad} is out of range")
                break
        if step.logprobs and len(step.logprobs) != len(step.output_ids):
            found.append(f"{where}: truncated, {len(step.logprobs)} logprobs for {len(step.output_ids)} output ids")
        if step.top_logprobs and len(step.top_logprobs) != len(step.output_ids):
            found.append(f"{where}: truncated, {len(step.top_logprobs)} top_logprobs for {len(step.output_ids)} output ids")
        for call in step.tool_calls:
            if call.id in call_ids:
                found.append(f"{where}: duplicate tool call id {call.id!r}")
            call_ids.add(call.id)
        for result in step.tool_results:
            if result.tool_call_id not in call_ids:
                found.append(f"{where}: tool result for unknown call id {result.tool_call_id!r}")
    for fb in traj.feedback:
        if fb.trajectory_id != traj.id:
            found.append(f"feedback names trajectory {fb.trajectory_id!r}, not {traj.id!r}")
    return found


# Decoders built once: decoding is the hot path of every stage.
_MSGPACK = msgspec.msgpack.Decoder(Trajectory)
_JSON = msgspec.json.Decoder(Trajectory)


def decode(data: bytes, source: str) -> Trajectory:
    """Decode JSON or msgpack (sniffed) into a Trajectory; raises ContractError."""
    if not data.strip():
        raise ContractError(source, "empty file")
    fmt = store.sniff_format(data)
    try:
        traj = (_JSON if fmt == "json" else _MSGPACK).decode(data)
    except msgspec.ValidationError as e:
        raise ContractError(source, str(e)) from None
    except msgspec.DecodeError as e:
        raise ContractError(source, f"not valid {'JSON' if fmt == 'json' else 'msgpack'} ({e})") from None
    if traj.schema_version > TRAJECTORY_VERSION:
        raise ContractError(
            source, f"schema_version {traj.schema_version} is newer than this tinygpt understands ({TRAJECTORY_VERSION}); upgrade tinygpt"
        )
    return traj


def examine(ref: TrajectoryRef) -> tuple[FileRecord, Trajectory | None]:
    """Read and check one file; never raises for bad content (only for I/O errors)."""
    path = store.resolve(ref.path)
    shown = Path(ref.origin).name if ref.origin else path.name
    now = time.time()

    def quarantined(reason: str, sha: str) -> tuple[FileRecord, None]:
        return FileRecord(sha256=sha, status="quarantined", path=ref.path, origin=ref.origin, reason=reason, ingested_at=now), None

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return quarantined(f"file not found: {path}", ref.sha256)
    except IsADirectoryError:
        return quarantined(f"is a directory: {path}", ref.sha256)
    sha = store.sha256_bytes(data)
    if ref.sha256 and sha != ref.sha256:
        return quarantined(f"content changed since it was enqueued (sha256 {sha[:12]}..., expected {ref.sha256[:12]}...)", ref.sha256)
    try:
        traj = decode(data, shown)
    except ContractError as e:
        return quarantined(str(e), sha)
    found = problems(traj)
    if found:
        extra = f" (+{len(found) - MAX_REASONS} more)" if len(found) > MAX_REASONS else ""
        return quarantined(f"{shown}: " + "; ".join(found[:MAX_REASONS]) + extra, sha)
    last = traj.steps[-1]
    record = FileRecord(
        sha256=sha,
        status="ingested",
        path=ref.path,
        origin=ref.origin,
        trajectory_id=traj.id,
        project=traj.project,
        base_model=traj.base_model,
        base_digest=traj.base_digest,
        steps=len(traj.steps),
        tokens=len(last.prompt_ids) + len(last.output_ids),
        sampled_tokens=sum(len(s.output_ids) for s in traj.steps),
        feedback=len(traj.feedback),
        created_at=traj.created_at,
        ingested_at=now,
    )
    return record, traj


def _commit(conn: redis.Redis, records: list[FileRecord]) -> None:
    set_if_higher = conn.register_script(_SET_IF_HIGHER)
    with conn.pipeline(transaction=True) as pipe:
        for rec in records:
            pipe.hset(keys.files(), rec.sha256, msgspec.msgpack.encode(rec))
            if rec.status == "quarantined":
                pipe.zadd(keys.quarantine(), {rec.sha256: rec.ingested_at})
                continue
            pipe.zadd(keys.recent(), {rec.sha256: rec.ingested_at})
            pipe.sadd(keys.projects(), rec.project)
            set_if_higher(keys=[keys.versions(rec.project)], args=[rec.trajectory_id, version_rank(rec)], client=pipe)
        pipe.hdel(keys.pending(), *[rec.sha256 for rec in records])
        pipe.zremrangebyrank(keys.recent(), 0, -RECENT_KEEP - 1)
        pipe.execute()


def run(job: IngestJob, conn: redis.Redis) -> IngestResult:
    """Ingest every file of `job`; files already recorded are skipped."""
    result = IngestResult()
    refs = job.refs()
    for start in range(0, len(refs), CHUNK):
        chunk = refs[start : start + CHUNK]
        known = conn.hmget(keys.files(), [r.sha256 for r in chunk]) if all(r.sha256 for r in chunk) else [None] * len(chunk)
        records: list[FileRecord] = []
        skipped: list[str] = []
        for ref, seen in zip(chunk, known):
            if seen is not None:
                result.skipped += 1
                skipped.append(ref.sha256)
                continue
            record, _ = examine(ref)
            if record.status == "quarantined":
                result.quarantined += 1
                result.reasons[record.sha256 or ref.path] = record.reason
            else:
                result.ingested += 1
            if record.sha256:
                records.append(record)
        if records:
            _commit(conn, records)
        if skipped:
            conn.hdel(keys.pending(), *skipped)  # recorded before: nothing is pending
    return result


def load(record: FileRecord) -> Trajectory:
    """The trajectory behind an ingested record (it passed the checks once)."""
    path = store.resolve(record.path)
    return decode(Path(path).read_bytes(), path.name)
