"""Dataset: rows from recorded ids, loss masks, splits without leakage, manifest (real Redis)."""

from __future__ import annotations

import hashlib
import json

import msgspec
import pytest

from tests.fixtures.trajectories import helpers
from tests.fixtures.trajectories.synth import Synth, encode
from tinygpt.queue import keys
from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts import read_any, read_json
from tinygpt.runtime.contracts.dataset import DatasetManifest, DatasetRow, PreferencePair
from tinygpt.runtime.contracts.jobs import DatasetJob, LabelJob
from tinygpt.runtime.contracts.pipeline import LabelRule
from tinygpt.runtime.contracts.trajectory import Trajectory
from tinygpt.workers import dataset, tokens


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def rows_of(path) -> list[DatasetRow]:
    return [msgspec.json.decode(line, type=DatasetRow) for line in path.read_bytes().splitlines() if line]


def all_rows(result) -> list[DatasetRow]:
    from pathlib import Path

    return [r for s in dataset.SPLITS for r in rows_of(Path(result.path) / f"{s}.jsonl")]


def test_loss_mask_is_one_exactly_on_sampled_tokens():
    traj = read_any(helpers.HERE / "weather_tool.msgpack", Trajectory)
    (seq,) = tokens.sequences(traj)
    s0, s1 = traj.steps
    # Step 1's prompt continues step 0's prompt + reply, so the two chain into one row.
    assert seq.input_ids == s1.prompt_ids + s1.output_ids
    expected = [0] * len(s0.prompt_ids) + [1] * len(s0.output_ids)
    expected += [0] * (len(s1.prompt_ids) - len(s0.prompt_ids) - len(s0.output_ids)) + [1] * len(s1.output_ids)
    assert seq.loss_mask == expected


def test_a_prefix_mismatch_step_is_masked_from_the_recording_to_the_training_batch(redis_client, tmp_path, home):
    """README: a step flagged prefix_mismatch is masked out of the loss. Recorded file ▶
    ingest ▶ dedupe ▶ label ▶ dataset ▶ the trainer's batches: not one of its ids is a target."""
    from tinygpt.runtime.contracts.trajectory import Feedback
    from tinygpt.workers.training.data import BatchPlan, load_dataset

    traj = read_any(helpers.HERE / "prefix_mismatch.msgpack", Trajectory)
    s0, s1 = traj.steps
    assert s1.prefix_mismatch and not s0.prefix_mismatch
    # Scored, so the label stage keeps it (a plain chat nobody scored is not trained on).
    scored = msgspec.structs.replace(traj, feedback=[Feedback(trajectory_id=traj.id, reward=1.0)])
    files = helpers.write(tmp_path, {"pm.msgpack": encode(scored)})
    helpers.run_stages(redis_client, files)
    result = helpers.build(redis_client, "pm", valid_fraction=0.0, test_fraction=0.0)
    ds = load_dataset(result.path)
    (row,) = ds.splits["train"]
    assert row.input_ids == s0.prompt_ids + s0.output_ids  # the drifted step trains nothing: no row
    (batch,) = BatchPlan(ds.splits["train"], batch_size=4, max_len=4096, pack=False, seed=0).fixed()
    trained = [int(t) for t, m in zip(batch.targets[0], batch.mask[0]) if m]
    assert trained == s0.output_ids and batch.tokens == len(s0.output_ids)


def test_masked_steps_contribute_context_only():
    traj = read_any(helpers.HERE / "invalid_args.json", Trajectory)
    (seq,) = tokens.sequences(traj, {0})
    assert seq.trained == len(traj.steps[1].output_ids)
    assert tokens.sequences(traj, {0, 1}) == []


def test_dataset_from_recorded_fixtures(redis_client, home):
    helpers.run_stages(redis_client, helpers.GOOD + helpers.BAD)
    result = helpers.build(redis_client, "fx")
    manifest = read_json(home / "datasets" / "fx" / "manifest.json", DatasetManifest)
    assert manifest.digest == result.digest and manifest.base_digest == "0d" * 32
    # invalid-args (tool_validity) and pair-bad (feedback) are dropped by the label rule,
    # plain-chat and prefix-mismatch because nobody scored them (no signal).
    assert manifest.dropped == {"label_drop": 4}
    assert manifest.trajectories == 3 and result.pending == 0
    rows = all_rows(result)
    assert {r.trajectory_id for r in rows} == {"rec-weather-tool", "rec-tool-error", "rec-pair-good"}
    assert manifest.rows == len(rows) == 3
    assert manifest.trained_tokens == sum(sum(r.loss_mask) for r in rows)
    # Every file is named by its content hash.
    for f in [*manifest.splits.values(), manifest.pairs]:
        assert hashlib.sha256((home / "datasets" / "fx" / f.path).read_bytes()).hexdigest() == f.sha256
    (pair,) = [msgspec.json.decode(line, type=PreferencePair) for line in (home / "datasets" / "fx" / manifest.pairs.path).read_bytes().splitlines()]
    assert (pair.chosen_trajectory, pair.rejected_trajectory) == ("rec-pair-good", "rec-pair-bad")
    good = read_any(helpers.HERE / "pair_good.msgpack", Trajectory)
    assert pair.prompt_ids == good.steps[0].prompt_ids and pair.chosen_ids == good.steps[0].output_ids
    dropped = [json.loads(line) for line in (home / "datasets" / "fx" / result.digest[:16] / "dropped.jsonl").read_text().splitlines()]
    assert {d["trajectory_id"]: d["detail"] for d in dropped}["rec-invalid-args"] == "tool_validity 0.00 < 1.00"


def test_rebuilding_is_idempotent_and_names_the_same_files(redis_client, home):
    helpers.run_stages(redis_client, helpers.GOOD)
    a = helpers.build(redis_client, "again")
    b = helpers.build(redis_client, "again")
    assert a.digest == b.digest and a.path == b.path
    assert sorted(p.name for p in (home / "datasets" / "again").iterdir()) == sorted(["manifest.json", a.digest[:16]])
    assert msgspec.msgpack.decode(redis_client.hget(keys.datasets(), "again"), type=DatasetManifest).digest == a.digest


def test_splits_are_by_trajectory_with_no_leakage_and_stable_as_data_grows(redis_client, tmp_path):
    synth = Synth(seed=11, near_fraction=0, exact_fraction=0, invalid_call_rate=0)
    trajs = synth.corpus(300)
    files = helpers.write(tmp_path, {f"{t.id}.msgpack": encode(t) for t in trajs})
    keep_all = LabelJob(sha256s=["x"], rule=LabelRule(keep_unlabelled=True))  # plain chats too: this is about splits
    helpers.run_stages(redis_client, files[:200], label=keep_all)
    small = helpers.build(redis_client, "grow", valid_fraction=0.15, test_fraction=0.15)
    helpers.run_stages(redis_client, files[200:], label=keep_all)
    big = helpers.build(redis_client, "grow", valid_fraction=0.15, test_fraction=0.15)
    assert small.digest != big.digest
    split_of = {}
    for r in all_rows(big):
        assert split_of.setdefault(r.trajectory_id, r.split) == r.split  # one split per trajectory
    counts = {s: sum(1 for v in split_of.values() if v == s) for s in dataset.SPLITS}
    assert counts["valid"] > 20 and counts["test"] > 20 and counts["train"] > 150
    for r in all_rows(small):
        assert split_of[r.trajectory_id] == r.split  # kept its split when the data grew


def test_duplicates_other_models_and_pending_work_are_left_out(redis_client, tmp_path):
    synth = Synth(seed=12, near_fraction=0, exact_fraction=0, invalid_call_rate=0)
    a, b, c = synth.trajectory(0), synth.trajectory(1), synth.trajectory(2)
    dup = msgspec.structs.replace(a, id="dup")
    other = msgspec.structs.replace(b, id="other-model", base_model="qwen3-0.6b")
    files = helpers.write(tmp_path, {f"{t.id}.msgpack": encode(t) for t in (a, b, dup, other)})
    helpers.run_stages(redis_client, files, label=LabelJob(sha256s=["x"], rule=LabelRule(keep_unlabelled=True)))
    from tinygpt.runtime.contracts.jobs import IngestJob
    from tinygpt.workers import ingest

    late = helpers.write(tmp_path, {"late.msgpack": encode(c)})
    ingest.run(IngestJob(batch=helpers.store(late)), redis_client)  # not deduped / labelled yet
    result = helpers.build(redis_client, "mix")
    assert result.dropped == {"exact_duplicate": 1, "other_base_model": 1, "pending_dedupe": 1}
    assert result.pending == 1 and result.trajectories == 2


def test_failed_episodes_become_undesirable_rows_for_preference_training(redis_client, home):
    from tinygpt.workers.training.data import load_dataset

    helpers.run_stages(redis_client, helpers.GOOD + helpers.BAD)
    result = helpers.build(redis_client, "prefs")
    manifest = read_json(home / "datasets" / "prefs" / "manifest.json", DatasetManifest)
    assert manifest.schema_version == 2 and manifest.undesirable is not None
    root = home / "datasets" / "prefs"
    assert hashlib.sha256((root / manifest.undesirable.path).read_bytes()).hexdigest() == manifest.undesirable.sha256
    bad = rows_of(root / manifest.undesirable.path)
    # The two label-dropped episodes (an invalid call, negative feedback), every sampled token trained.
    assert {r.trajectory_id for r in bad} == {"rec-invalid-args", "rec-pair-bad"} and result.undesirable == len(bad)
    assert not any(r.desirable for r in bad) and all(r.reward is not None and r.reward < 1 for r in bad)
    invalid = read_any(helpers.HERE / "invalid_args.json", Trajectory)
    (row,) = [r for r in bad if r.trajectory_id == "rec-invalid-args"]
    assert sum(row.loss_mask) == sum(len(s.output_ids) for s in invalid.steps)
    # Successful rows are untouched (desirable, with their reward); SFT never sees the failures.
    good = all_rows(result)
    assert all(r.desirable for r in good) and {r.trajectory_id for r in good}.isdisjoint({"rec-invalid-args", "rec-pair-bad"})
    loaded = load_dataset(result.path)
    assert sum(len(loaded.undesirable(s)) for s in dataset.SPLITS) == len(bad)
    assert sum(len(loaded.rows(s)) for s in dataset.SPLITS) == result.rows
    (pair,) = [p for s in dataset.SPLITS for p in loaded.pairs(s)]
    assert pair.split == next(r.split for r in good if r.trajectory_id == "rec-pair-good")


def test_rows_load_with_the_finetune_loader(redis_client, home):
    from tinygpt.workers.training.data import load_dataset

    helpers.run_stages(redis_client, helpers.GOOD)
    result = helpers.build(redis_client, "loadable")
    for path in (home / "datasets" / "loadable", result.path):  # latest, and the immutable build
        loaded = load_dataset(path)
        assert sum(len(loaded.rows(s)) for s in dataset.SPLITS) == result.rows


def test_bad_jobs_fail_permanently(redis_client):
    with pytest.raises(PermanentError, match="dataset name"):
        dataset.run(DatasetJob(name="Bad Name", base_model="m"), redis_client)
    with pytest.raises(PermanentError, match="no ingested trajectories"):
        dataset.run(DatasetJob(name="empty", base_model="m"), redis_client)


def test_a_policy_dataset_holds_its_selection_only(redis_client):
    from tinygpt.runtime.contracts.pipeline import LabelRecord
    from tinygpt.runtime.contracts.policy import Selection

    helpers.run_stages(redis_client, helpers.GOOD)
    labels = [msgspec.msgpack.decode(v, type=LabelRecord) for v in redis_client.hvals(keys.labels("default"))]
    weather = {r.trajectory_id for r in labels if r.keep and "get_weather" in r.tools}
    assert weather and weather != {r.trajectory_id for r in labels if r.keep}
    only = helpers.build(redis_client, "weather", select=Selection(project="default", tools=["get_weather"]))
    assert {r.trajectory_id for r in all_rows(only)} == weather and only.dropped["not_selected"] > 0
    # Plain chats nobody scored: only where the policy opts in.
    plain = helpers.build(redis_client, "chat", select=Selection(project="default", keep_unlabelled=True))
    assert {"rec-plain-chat", "rec-prefix-mismatch"} <= {r.trajectory_id for r in all_rows(plain)}
    with pytest.raises(PermanentError, match="selects"):
        helpers.build(redis_client, "none", select=Selection(project="default", served_by=["nobody"]))
