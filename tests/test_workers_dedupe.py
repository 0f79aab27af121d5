"""Dedupe: exact and near duplicates dropped with reasons, versions kept, races (real Redis)."""

from __future__ import annotations

import threading

import msgspec
import pytest
import redis

from tests.fixtures.trajectories import helpers
from tests.fixtures.trajectories.synth import Synth, encode
from tinygpt.queue import keys
from tinygpt.runtime.contracts.jobs import DedupeJob, IngestJob
from tinygpt.runtime.contracts.pipeline import DedupeRecord
from tinygpt.runtime.contracts.trajectory import HINDSIGHT_SEPARATOR, Feedback
from tinygpt.workers import dedupe, ingest


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))


def ingest_trajs(conn, tmp_path, trajs) -> list[str]:
    files = helpers.write(tmp_path, {f"{t.id}-{i}.msgpack": encode(t) for i, t in enumerate(trajs)})
    refs = helpers.store(files)
    ingest.run(IngestJob(batch=refs), conn)
    return [r.sha256 for r in refs]


def decisions(conn, project="default") -> dict[str, DedupeRecord]:
    return {k.decode(): msgspec.msgpack.decode(v, type=DedupeRecord) for k, v in conn.hgetall(keys.dedupe(project)).items()}


def test_exact_and_near_duplicates_are_dropped_with_what_they_duplicate(redis_client, tmp_path):
    synth = Synth(seed=5)
    a, b, c = synth.trajectory(0), synth.trajectory(1), synth.trajectory(2)
    exact = msgspec.structs.replace(a, id="copy-of-a")
    near = synth.near_copy(b, "near-b", change=0.01)
    far = synth.near_copy(c, "far-c", change=0.5)
    shas = ingest_trajs(redis_client, tmp_path, [a, b, c, exact, near, far])
    result = dedupe.run(DedupeJob(sha256s=shas), redis_client)
    assert (result.kept, result.exact, result.near) == (4, 1, 1)
    d = decisions(redis_client)
    assert d[shas[3]].verdict == "exact" and d[shas[3]].of == a.id
    assert d[shas[4]].verdict == "near" and d[shas[4]].of == b.id and d[shas[4]].similarity >= 0.9
    assert d[shas[5]].verdict == "kept"
    assert result.dropped[shas[4]].startswith("near 0.9") and result.dropped[shas[4]].endswith("of " + b.id)


def test_history_is_shared_across_jobs_and_reruns_change_nothing(redis_client, tmp_path):
    synth = Synth(seed=6)
    a = synth.trajectory(0)
    (sha_a,) = ingest_trajs(redis_client, tmp_path, [a])
    dedupe.run(DedupeJob(sha256s=[sha_a]), redis_client)
    (sha_n,) = ingest_trajs(redis_client, tmp_path, [synth.near_copy(a, "later", change=0.005)])
    assert dedupe.run(DedupeJob(sha256s=[sha_n]), redis_client).near == 1
    snapshot = {k: redis_client.dump(k) for k in redis_client.keys(b"tinygpt:p:*")}
    again = dedupe.run(DedupeJob(sha256s=[sha_a, sha_n]), redis_client)
    assert again.skipped == 2
    assert {k: redis_client.dump(k) for k in redis_client.keys(b"tinygpt:p:*")} == snapshot


def test_versions_of_one_session_are_not_duplicates_of_each_other(redis_client, tmp_path):
    t = Synth(seed=7).trajectory(0)
    liked = msgspec.structs.replace(t, feedback=[Feedback(trajectory_id=t.id, label="good")])
    shas = ingest_trajs(redis_client, tmp_path, [t, liked])
    result = dedupe.run(DedupeJob(sha256s=shas), redis_client)
    d = decisions(redis_client)
    assert d[shas[0]].verdict == "superseded" and d[shas[0]].of == shas[1]
    assert d[shas[1]].verdict == "kept" and result.exact == result.near == 0


def test_a_hindsight_relabel_is_no_duplicate_of_its_original(redis_client, tmp_path):
    # A relabel repeats its original's ids under another request; the same near copy under
    # an unrelated id is still dropped.
    synth = Synth(seed=9)
    a = synth.trajectory(0)
    relabel = synth.near_copy(a, f"{a.id}{HINDSIGHT_SEPARATOR}0123456789ab", change=0.01)
    stranger = synth.near_copy(a, "someone-else", change=0.01)
    shas = ingest_trajs(redis_client, tmp_path, [a, relabel, stranger])
    dedupe.run(DedupeJob(sha256s=shas), redis_client)
    d = decisions(redis_client)
    assert [d[s].verdict for s in shas] == ["kept", "kept", "near"]


def test_threshold_is_configurable(redis_client, tmp_path):
    synth = Synth(seed=8)
    a = synth.trajectory(0)
    b = synth.near_copy(a, "b", change=0.03)  # roughly 0.75 similar
    shas = ingest_trajs(redis_client, tmp_path, [a, b])
    strict = dedupe.run(DedupeJob(sha256s=shas, near_threshold=0.95), redis_client)
    assert strict.near == 0
    redis_client.flushall()
    shas = ingest_trajs(redis_client, tmp_path, [a, b])
    loose = dedupe.run(DedupeJob(sha256s=shas, near_threshold=0.6), redis_client)
    assert loose.near == 1


def test_two_workers_racing_never_keep_both_of_a_pair(redis_client, redis_url, tmp_path):
    # Without the project lock both would check an empty index and keep their copy.
    synth = Synth(seed=9)
    origs = [synth.trajectory(i) for i in range(300)]
    copies = [synth.near_copy(t, f"copy-{t.id}", change=0.0) for t in origs]  # one token differs
    sha_o = ingest_trajs(redis_client, tmp_path, origs)
    sha_c = ingest_trajs(redis_client, tmp_path, copies)
    results = []

    def work(shas):
        with redis.Redis.from_url(redis_url) as conn:
            results.append(dedupe.run(DedupeJob(sha256s=shas, near_threshold=0.8), conn))

    threads = [threading.Thread(target=work, args=(s,)) for s in (sha_o, sha_c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.kept for r in results) == 300 and sum(r.near for r in results) == 300
    d = decisions(redis_client)
    for o, c in zip(sha_o, sha_c):
        assert sorted([d[o].verdict, d[c].verdict]) == ["kept", "near"]


def test_estimates_near_the_threshold_are_settled_on_the_exact_jaccard():
    import numpy as np

    from tinygpt.workers import minhash

    rng = np.random.default_rng(10)
    a = rng.integers(0, 49152, size=400)
    b = a.copy()
    b[::25] = rng.integers(0, 49152, size=b[::25].size)  # exact Jaccard well below 0.9
    assert minhash.jaccard(a, b) < 0.8
    sig_a = minhash.signatures([a]).astype(dedupe.SIG_DTYPE)[0]
    sig_b = sig_a.copy()
    sig_b[:10] += 1  # a signature that *estimates* 118/128 = 0.92
    bands, rows = 1, 1  # one band over bin 127: the two always meet as candidates
    keys = np.zeros(1, dtype=np.uint64)

    def verdict(stream_of):
        state = dedupe.IndexState(bands, rows, stream_of)
        state.decide("a", "sha-a", b"a", sig_a, keys, 0.9, 0, a)
        return state.decide("b", "sha-b", b"b", sig_b, keys, 0.9, 1, b)[0]

    assert verdict(None) == "near"  # estimate only
    assert verdict({"sha-a": a}.get) == "kept"  # the exact check overrules the estimate
