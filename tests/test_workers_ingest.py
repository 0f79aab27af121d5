"""Ingest: contract checks, quarantine with reasons, idempotence, versions (real Redis)."""

from __future__ import annotations

import msgspec
import pytest

from tests.fixtures.trajectories import helpers
from tests.fixtures.trajectories.synth import MALFORMED_KINDS, Synth, encode, malformed
from tinygpt.queue import keys
from tinygpt.runtime.contracts import read_any
from tinygpt.runtime.contracts.jobs import IngestJob
from tinygpt.runtime.contracts.pipeline import FileRecord
from tinygpt.runtime.contracts.trajectory import Feedback, Trajectory
from tinygpt.workers import ingest


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def records(conn) -> dict[str, FileRecord]:
    return {k.decode(): msgspec.msgpack.decode(v, type=FileRecord) for k, v in conn.hgetall(keys.files()).items()}


def test_recorded_fixtures_ingest_and_bad_ones_are_quarantined_with_reasons(redis_client):
    refs = helpers.store(helpers.GOOD + helpers.BAD)
    result = ingest.run(IngestJob(batch=refs), redis_client)
    assert (result.ingested, result.quarantined) == (len(helpers.GOOD), len(helpers.BAD))
    recs = records(redis_client)
    by_origin = {r.origin.rsplit("/", 1)[-1]: r for r in recs.values()}
    assert "Input data was truncated" in by_origin["bad_truncated.msgpack"].reason
    assert "truncated, 21 logprobs for 24 output ids" in by_origin["bad_logprobs_cut.msgpack"].reason
    assert "unknown field `temprature`" in by_origin["bad_unknown_field.json"].reason
    assert redis_client.zcard(keys.quarantine()) == len(helpers.BAD)
    good = by_origin["weather_tool.msgpack"]
    assert (good.status, good.trajectory_id, good.steps, good.feedback) == ("ingested", "rec-weather-tool", 2, 1)
    assert redis_client.hget(keys.versions("default"), "rec-weather-tool").decode().endswith(good.sha256)


def test_every_kind_of_malformed_file_is_quarantined_and_never_raises(redis_client, tmp_path):
    paths = helpers.write(tmp_path, {f"{k}.msgpack": malformed(k, i) for i, k in enumerate(MALFORMED_KINDS)})
    result = ingest.run(IngestJob(batch=helpers.store(paths)), redis_client)
    assert result.quarantined == len(MALFORMED_KINDS) and result.ingested == 0
    reasons = {r.origin.rsplit("/", 1)[-1]: r.reason for r in records(redis_client).values()}
    expected = {
        "truncated": "truncated",
        "not_msgpack": "not valid msgpack",
        "wrong_type": "Expected `array`, got `str`",
        "unknown_field": "unknown field `colour`",
        "no_steps": "no steps",
        "logprobs_cut": "logprobs for",
        "bad_token": "token id -5 is out of range",
        "orphan_result": "tool result for unknown call id 'nope'",
        "empty": "empty file",
    }
    for kind, fragment in expected.items():
        assert fragment in reasons[f"{kind}.msgpack"], (kind, reasons[f"{kind}.msgpack"])


def test_rerun_skips_recorded_files(redis_client):
    refs = helpers.store(helpers.GOOD)
    ingest.run(IngestJob(batch=refs), redis_client)
    before = redis_client.hgetall(keys.files())
    again = ingest.run(IngestJob(batch=refs), redis_client)
    assert (again.ingested, again.skipped) == (0, len(refs))
    assert redis_client.hgetall(keys.files()) == before


def test_missing_and_changed_files_are_quarantined(redis_client, home):
    (ref,) = helpers.store(helpers.GOOD[:1])
    from tinygpt.queue import store

    store.resolve(ref.path).write_bytes(b"rewritten")
    result = ingest.run(IngestJob(batch=[ref]), redis_client)
    assert "content changed since it was enqueued" in result.reasons[ref.sha256]
    gone = msgspec.structs.replace(ref, path=str(home / "nope.msgpack"), sha256="f" * 64)
    assert "file not found" in ingest.run(IngestJob(batch=[gone]), redis_client).reasons["f" * 64]


def test_the_most_complete_version_of_a_session_wins_in_any_order(redis_client, tmp_path):
    base = read_any(helpers.HERE / "weather_tool.msgpack", Trajectory)
    first = msgspec.structs.replace(base, steps=base.steps[:1], feedback=[])
    full = msgspec.structs.replace(base, feedback=[])
    liked = msgspec.structs.replace(base, feedback=[Feedback(trajectory_id=base.id, label="good")])
    files = helpers.write(tmp_path, {"a.msgpack": encode(liked), "b.msgpack": encode(first), "c.msgpack": encode(full)})
    for order in ([0, 1, 2], [2, 1, 0]):
        redis_client.flushall()
        refs = helpers.store([files[i] for i in order])
        for ref in refs:  # one job per flush, as the runtime's hook makes them
            ingest.run(IngestJob(trajectory_path=ref.path, sha256=ref.sha256), redis_client)
        current = ingest.current_sha(redis_client.hget(keys.versions("default"), base.id))
        assert current == helpers.store([files[0]])[0].sha256  # most steps, then most feedback


def test_problems_are_named_plainly():
    traj = Synth(seed=3).trajectory(0)
    assert ingest.problems(traj) == []
    bad = msgspec.structs.replace(traj, id="", project="Not A Name", steps=[msgspec.structs.replace(traj.steps[0], index=4)])
    found = ingest.problems(bad)
    assert "empty trajectory id" in found
    assert any("project name 'Not A Name'" in f for f in found)
    assert "step 0: index is 4, expected 0" in found
