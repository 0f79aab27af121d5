"""Stage 2, dedupe: drop exact and near duplicates before anything spends effort on them.

Exact: a digest of the trajectory's token ids (what its training sequences contain).
Near: MinHash over 5-token shingles of the same ids, LSH bands to find candidates,
then the estimated Jaccard on the whole signature against the threshold. The first
trajectory seen is kept; later ones are dropped with the reason recorded (which
trajectory they duplicate and how similar), so `tinygpt status` and the dataset report
can say what was dropped and why. Versions of one trajectory (a session flushed again
with more steps) are never duplicates of each other: the most complete one wins. Nor are
a trajectory and its hindsight relabels, which repeat its sampled ids under another request.

The index lives in Redis so every worker on every host checks against the same
history: an exact-digest hash, LSH buckets (each keeps a few members, which bounds the
work when a long shared system prompt makes many trajectories collide in a band) and
the members' signatures. A batch is checked and inserted under a per-project lock in
one MULTI, so two workers never both keep a pair of duplicates, and a killed worker
leaves the index as it was before the batch.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable

import msgspec
import numpy as np
import redis

from tinygpt.queue import keys
from tinygpt.runtime.contracts.base import Contract
from tinygpt.runtime.contracts.jobs import DedupeJob
from tinygpt.runtime.contracts.pipeline import DedupeRecord, FileRecord
from tinygpt.runtime.contracts.trajectory import lineage

from . import minhash
from .ingest import current_sha, load
from .tokens import token_stream

# Members remembered per LSH bucket. A true near duplicate agrees with its original on
# many bands, so it meets it in a bucket that is not full; a small cap keeps crowded
# buckets (a shared preamble) from turning every check into a scan.
BUCKET_CAP = 8
LOCK_TIMEOUT_S = 60
# Signatures are stored as the low 32 bits of each bin: equal-by-chance is 2**-32.
SIG_DTYPE = np.uint32
# Estimates this close to the threshold are settled on the exact Jaccard of the two
# token streams: three standard errors of a 128-bin estimate near 0.9.
EXACT_MARGIN = 0.08


class DedupeResult(Contract):
    kept: int = 0
    exact: int = 0
    near: int = 0
    superseded: int = 0
    skipped: int = 0
    # Dropped file sha256 -> why ("near 0.93 of t-17", "exact of t-3").
    dropped: dict[str, str] = {}


def exact_digest(stream: list[int]) -> bytes:
    return hashlib.blake2b(np.asarray(stream, dtype=np.int64).tobytes(), digest_size=16).digest()


class Candidate(msgspec.Struct):
    record: FileRecord
    stream: list[int]


class IndexState:
    """The slice of a project's Redis index one batch needs, plus what the batch adds.

    `stream_of(sha)` returns an indexed trajectory's token stream; it settles estimates
    too close to the threshold to trust on the exact Jaccard (None: estimates only).
    """

    def __init__(self, bands: int, rows: int, stream_of: Callable[[str], np.ndarray | None] | None = None):
        self.bands = bands
        self.rows = rows
        self.stream_of = stream_of
        self.buckets: dict[bytes, list[int]] = {}
        self.members: dict[int, tuple[str, str, np.ndarray]] = {}
        self.exact: dict[bytes, str] = {}
        self.changed_buckets: set[bytes] = set()
        self.new_members: list[int] = []
        self.new_exact: dict[bytes, str] = {}
        self._shingles: dict[str, np.ndarray | None] = {}

    @staticmethod
    def fields(band_keys: np.ndarray) -> list[bytes]:
        return [bytes([b]) + int(k).to_bytes(8, "little") for b, k in enumerate(band_keys)]

    def _shingle_set(self, sha: str, stream: np.ndarray | None = None) -> np.ndarray | None:
        if sha not in self._shingles:
            if stream is None and self.stream_of is not None:
                stream = self.stream_of(sha)
            self._shingles[sha] = None if stream is None else np.unique(minhash.shingle_hashes(stream))
        return self._shingles[sha]

    def _exact_jaccard(self, sha: str, stream: np.ndarray | None, other_sha: str) -> float | None:
        if self.stream_of is None:
            return None
        mine, theirs = self._shingle_set(sha, stream), self._shingle_set(other_sha)
        if mine is None or theirs is None or not (mine.size and theirs.size):
            return None
        common = np.intersect1d(mine, theirs, assume_unique=True).size
        return common / (mine.size + theirs.size - common)

    def _near(self, sha: str, stream: np.ndarray | None, sig: np.ndarray, cands: list[int], threshold: float):
        """(member tid, similarity) of the best near duplicate among `cands`, or None."""
        sims = minhash.similarity(sig, np.stack([self.members[m][2] for m in cands]))
        for j in np.argsort(-sims, kind="stable"):
            estimate = float(sims[j])
            if estimate < threshold - EXACT_MARGIN:
                break
            tid, other_sha, _ = self.members[cands[j]]
            if estimate >= threshold + EXACT_MARGIN:
                return tid, estimate
            exact = self._exact_jaccard(sha, stream, other_sha)
            if exact is None and estimate >= threshold:
                return tid, estimate
            if exact is not None and exact >= threshold:
                return tid, exact
        return None

    def decide(
        self,
        tid: str,
        sha: str,
        digest: bytes,
        sig: np.ndarray,
        band_keys: np.ndarray,
        threshold: float,
        number: int,
        stream: np.ndarray | None = None,
    ):
        """(verdict, of, similarity) for one trajectory; kept ones join the index as `number`."""
        owner = self.exact.get(digest)
        if owner == tid:
            # Another version with the same tokens (e.g. rewritten to add feedback) is
            # already indexed: nothing new to remember.
            return "kept", "", 0.0
        if owner is not None:
            return "exact", owner, 1.0
        fields = self.fields(band_keys)
        seen: set[int] = set()
        cands: list[int] = []
        for f in fields:
            for m in self.buckets.get(f, ()):
                # Not against itself (another version) nor its hindsight relabels (runtime/serving/hindsight.py).
                if m not in seen and lineage(self.members[m][0]) != lineage(tid):
                    seen.add(m)
                    cands.append(m)
        if cands and sig[0] != np.uint32(minhash.EMPTY):
            found = self._near(sha, stream, sig, cands, threshold)
            if found is not None:
                return "near", found[0], found[1]
        self.members[number] = (tid, sha, sig)
        self.new_members.append(number)
        for f in fields:
            bucket = self.buckets.setdefault(f, [])
            if len(bucket) < BUCKET_CAP:
                bucket.append(number)
                self.changed_buckets.add(f)
        self.exact[digest] = tid
        self.new_exact[digest] = tid
        return "kept", "", 0.0


def _params(conn: redis.Redis, project: str, threshold: float) -> tuple[int, int]:
    # Bands are fixed when a project's index is created: changing them later would
    # orphan every bucket. A later, different threshold still applies at verification.
    bands, rows = minhash.lsh_params(threshold)
    conn.hsetnx(keys.lsh_meta(project), "bands", bands)
    conn.hsetnx(keys.lsh_meta(project), "rows", rows)
    conn.hsetnx(keys.lsh_meta(project), "shingle", minhash.SHINGLE)
    meta = conn.hgetall(keys.lsh_meta(project))
    if int(meta[b"shingle"]) != minhash.SHINGLE:
        raise RuntimeError(f"project {project!r}: dedupe index was built with {int(meta[b'shingle'])}-token shingles, this tinygpt uses {minhash.SHINGLE}")
    return int(meta[b"bands"]), int(meta[b"rows"])


def _load_state(conn: redis.Redis, project: str, bands: int, rows: int, digests: list[bytes], all_fields: list[bytes], stream_of) -> IndexState:
    state = IndexState(bands, rows, stream_of)
    if digests:
        for d, owner in zip(digests, conn.hmget(keys.exact_index(project), digests)):
            if owner is not None:
                state.exact[d] = owner.decode()
    unique_fields = list(dict.fromkeys(all_fields))
    numbers: set[int] = set()
    if unique_fields:
        for f, packed in zip(unique_fields, conn.hmget(keys.lsh_buckets(project), unique_fields)):
            if packed:
                members = np.frombuffer(packed, dtype=np.uint32).tolist()
                state.buckets[f] = members
                numbers.update(members)
    if numbers:
        ordered = sorted(numbers)
        for n, raw in zip(ordered, conn.hmget(keys.lsh_members(project), ordered)):
            if raw is None:
                continue
            tid, sha, sig = msgspec.msgpack.decode(raw)
            state.members[n] = (tid, sha, np.frombuffer(sig, dtype=SIG_DTYPE))
        # A bucket may name a member whose write was lost with a killed batch: ignore it.
        for f, members in state.buckets.items():
            state.buckets[f] = [m for m in members if m in state.members]
    return state


def _dedupe_project(conn: redis.Redis, project: str, batch: list[Candidate], threshold: float, result: DedupeResult) -> None:
    streams = [np.asarray(c.stream, dtype=np.int64) for c in batch]
    # Signatures are computed before taking the lock: that is the expensive part.
    sigs64 = minhash.signatures(streams)
    sigs = sigs64.astype(SIG_DTYPE)
    digests = [exact_digest(c.stream) for c in batch]
    lock = conn.lock(keys.dedupe_lock(project), timeout=LOCK_TIMEOUT_S, blocking_timeout=None)
    with lock:
        bands, rows = _params(conn, project, threshold)
        bkeys = minhash.band_keys(sigs64, bands, rows)
        all_fields = [f for k in bkeys for f in IndexState.fields(k)]
        in_batch = {c.record.sha256: streams[i] for i, c in enumerate(batch)}

        def stream_of(sha: str) -> np.ndarray | None:
            if sha in in_batch:
                return in_batch[sha]
            raw = conn.hget(keys.files(), sha)
            if raw is None:
                return None
            return np.asarray(token_stream(load(msgspec.msgpack.decode(raw, type=FileRecord))), dtype=np.int64)

        state = _load_state(conn, project, bands, rows, digests, all_fields, stream_of)
        versions = conn.hmget(keys.versions(project), [c.record.trajectory_id for c in batch])
        first = int(conn.incrby(keys.lsh_next(project), len(batch))) - len(batch)
        now = time.time()
        records: list[DedupeRecord] = []
        for i, (cand, version) in enumerate(zip(batch, versions)):
            rec = cand.record
            current = current_sha(version)
            if current is not None and current != rec.sha256:
                verdict, of, sim = "superseded", current, 0.0
            else:
                verdict, of, sim = state.decide(rec.trajectory_id, rec.sha256, digests[i], sigs[i], bkeys[i], threshold, first + i, streams[i])
            records.append(DedupeRecord(sha256=rec.sha256, trajectory_id=rec.trajectory_id, verdict=verdict, of=of, similarity=sim, decided_at=now))
            if i % 256 == 255:
                lock.reacquire()  # a big batch must not outlive its lock
        with conn.pipeline(transaction=True) as pipe:
            for r in records:
                pipe.hset(keys.dedupe(project), r.sha256, msgspec.msgpack.encode(r))
            if state.new_exact:
                pipe.hset(keys.exact_index(project), mapping=state.new_exact)
            for n in state.new_members:
                tid, sha, sig = state.members[n]
                pipe.hset(keys.lsh_members(project), n, msgspec.msgpack.encode([tid, sha, sig.tobytes()]))
            if state.changed_buckets:
                pipe.hset(
                    keys.lsh_buckets(project),
                    mapping={f: np.asarray(state.buckets[f], dtype=np.uint32).tobytes() for f in state.changed_buckets},
                )
            pipe.execute()
    for r in records:
        if r.verdict == "kept":
            result.kept += 1
        elif r.verdict == "superseded":
            result.superseded += 1
        else:
            setattr(result, r.verdict, getattr(result, r.verdict) + 1)
            result.dropped[r.sha256] = f"{r.verdict} {r.similarity:.2f} of {r.of}" if r.verdict == "near" else f"exact of {r.of}"


def resolve_shas(conn: redis.Redis, trajectory_id: str, project: str) -> list[str]:
    """The current file of a trajectory id, as a one-element list (empty when unknown)."""
    sha = current_sha(conn.hget(keys.versions(project), trajectory_id))
    return [sha] if sha else []


def run(job: DedupeJob, conn: redis.Redis) -> DedupeResult:
    """Decide kept / exact / near / superseded for each ingested file of `job`."""
    result = DedupeResult()
    shas = list(dict.fromkeys(job.sha256s)) or resolve_shas(conn, job.trajectory_id, job.project)
    raw = conn.hmget(keys.files(), shas) if shas else []
    by_project: dict[str, list[FileRecord]] = defaultdict(list)
    for _sha, blob in zip(shas, raw):
        rec = msgspec.msgpack.decode(blob, type=FileRecord) if blob else None
        if rec is None or rec.status != "ingested":
            result.skipped += 1  # quarantined (or never ingested): nothing to compare
            continue
        by_project[rec.project].append(rec)
    for project, records in by_project.items():
        decided = conn.hmget(keys.dedupe(project), [r.sha256 for r in records])
        todo = [r for r, d in zip(records, decided) if d is None]
        result.skipped += len(records) - len(todo)
        if todo:
            batch = [Candidate(record=r, stream=token_stream(load(r))) for r in todo]
            _dedupe_project(conn, project, batch, job.near_threshold, result)
    return result
