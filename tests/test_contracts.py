"""Contracts: round trips, strict rejection, errors that name file and field."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from tinygpt.runtime.contracts import (
    KINDS,
    ContractError,
    DatasetRow,
    ProjectPins,
    Trajectory,
    decode_json,
    decode_msgpack,
    read_any,
    read_json,
    to_msgpack,
    write_json,
)
from tinygpt.runtime.contracts.jobs import JOB_KINDS, FinetuneJob
from tinygpt.runtime.contracts.trajectory import Feedback, Step, Timings, ToolCall, ToolResult, TopLogprob

REPO = Path(__file__).resolve().parents[1]


def sample_trajectory() -> Trajectory:
    step = Step(
        index=0,
        prompt_ids=[1, 2, 3, 4],
        output_ids=[5, 6, 7],
        logprobs=[-0.1, -0.2, -0.3],
        top_logprobs=[[TopLogprob(5, -0.1), TopLogprob(9, -2.5)]] * 3,
        text='<tool_call>{"name": "ls"}</tool_call>',
        tool_calls=[ToolCall(id="call_1", name="ls", arguments='{"path": "/"}', valid=True)],
        tool_results=[ToolResult(tool_call_id="call_1", content="etc", ok=True)],
        finish_reason="tool_calls",
        timings=Timings(prefill_s=0.01, decode_s=0.2, ttft_s=0.02, prompt_tokens=4, cached_tokens=2),
        prefix_mismatch=True,
        constraint="tools",
    )
    return Trajectory(
        id="t-1",
        base_model="smollm2-135m-instruct",
        base_digest="ab" * 32,
        tools=[{"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}],
        steps=[step],
        feedback=[Feedback(trajectory_id="t-1", reward=1.0, label="good")],
    )


def test_trajectory_round_trips_through_json_and_msgpack(tmp_path):
    traj = sample_trajectory()
    assert decode_msgpack(to_msgpack(traj), Trajectory, "mem") == traj
    write_json(tmp_path / "t.json", traj)
    assert read_json(tmp_path / "t.json", Trajectory) == traj
    (tmp_path / "t.msgpack").write_bytes(to_msgpack(traj))
    assert read_any(tmp_path / "t.msgpack", Trajectory) == traj
    # msgpack is the compact format for trajectories.
    assert len(to_msgpack(traj)) < len(msgspec.json.encode(traj))


def test_token_ids_survive_exactly():
    traj = sample_trajectory()
    back = decode_msgpack(to_msgpack(traj), Trajectory, "mem")
    assert back.steps[0].prompt_ids == [1, 2, 3, 4]
    assert back.steps[0].output_ids == [5, 6, 7]
    assert back.steps[0].prefix_mismatch is True


def test_unknown_field_is_rejected_with_its_name():
    with pytest.raises(ContractError, match="unknown field `bogus`"):
        decode_json(b'{"name": "p", "bogus": 1}', ProjectPins, "tinygpt.project.json")


def test_bad_field_error_names_file_field_and_expectation():
    with pytest.raises(ContractError) as e:
        decode_json(b'{"name": "p", "base_model": 3}', ProjectPins, "/x/tinygpt.project.json")
    msg = str(e.value)
    assert "/x/tinygpt.project.json" in msg and "$.base_model" in msg and "Expected `str`" in msg


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"name": "p", "specialists": [{"name": "Bad Name"}]}, "$.specialists[0].name"),
        ({"name": "p", "specialists": [{"name": "a", "sha256": "xyz"}]}, "$.specialists[0].sha256"),
        ({"name": "p", "specialists": [{"name": "a"}, {"name": "a"}]}, "duplicate names in `specialists`: a"),
        ({"name": "p", "eval_suites": [{"name": "s", "kind": "vibes", "data": "d.jsonl"}]}, "$.eval_suites[0].kind"),
        ({"name": "p", "eval_suites": [{"name": "s", "kind": "exact_match"}]}, "missing required field `data`"),
        ({"specialists": []}, "missing required field `name`"),
    ],
)
def test_project_rejections(doc, fragment):
    with pytest.raises(ContractError) as e:
        decode_json(json.dumps(doc), ProjectPins, "tinygpt.project.json")
    assert fragment in str(e.value)


def test_truncated_json_and_missing_file(tmp_path):
    with pytest.raises(ContractError, match="not valid JSON"):
        decode_json(b'{"name": "p"', ProjectPins, "f.json")
    with pytest.raises(ContractError, match="file not found"):
        read_json(tmp_path / "nope.json", ProjectPins)


def test_newer_schema_version_is_refused():
    with pytest.raises(ContractError, match="schema_version 99 is newer"):
        decode_json(b'{"name": "p", "schema_version": 99}', ProjectPins, "tinygpt.project.json")


def test_repo_project_file_is_valid():
    pins = read_json(REPO / "tinygpt.project.json", ProjectPins)
    assert pins.base_model == "smollm2-135m-instruct"


def test_dataset_row_and_job_payloads_round_trip():
    row = DatasetRow(id="r", input_ids=[1, 2, 3], loss_mask=[0, 1, 1], trajectory_id="t", step=0)
    assert decode_msgpack(to_msgpack(row), DatasetRow, "row") == row
    job = FinetuneJob(specialist="fs", base_model="m", dataset_dir="/d", output_dir="/o", method="dora")
    assert decode_msgpack(to_msgpack(job), FinetuneJob, "job") == job
    assert set(JOB_KINDS) == {"ingest", "dedupe", "label", "dataset", "finetune", "eval", "publish", "environment"}


def test_every_kind_has_a_json_schema():
    for name, kind in KINDS.items():
        schema = msgspec.json.schema(kind)
        assert "$defs" in schema, name


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    write_json(path, ProjectPins(name="old"))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        write_json(path, ProjectPins(name="new"))
    assert read_json(path, ProjectPins).name == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]
