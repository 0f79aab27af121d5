"""Build policies in tinygpt.project.json: documented by `tinygpt schema project`, bad ones
refused by `tinygpt validate` with the field path, methods as the training contract has them."""

from __future__ import annotations

import json
import re
from typing import get_args

import msgspec
import pytest

from tests.test_cli import run_cli
from tinygpt.runtime.contracts import ContractError, ProjectPins
from tinygpt.runtime.contracts.io import decode_json
from tinygpt.runtime.contracts.specialist import Method

SUITES = [{"name": "calls", "kind": "tool_call", "data": "evals/calls.jsonl"}]


def project(build: dict, **extra) -> dict:
    return {"name": "demo", "eval_suites": SUITES, "specialists": [{"name": "fs", "build": build}], **extra}


def test_the_schema_documents_build_policies():
    r = run_cli("schema", "project")
    assert r.returncode == 0
    defs = json.loads(r.stdout)["$defs"]
    assert "build" in defs["SpecialistPin"]["properties"]
    assert {"select", "trigger", "method", "training", "gate"} <= set(defs["BuildPolicy"]["properties"])
    trigger = defs["Trigger"]["properties"]
    assert trigger["min_new_rows"]["minimum"] == 1 and "last build" in trigger["min_new_rows"]["description"]
    assert "steps" in defs["TrainingConfig"]["properties"]  # the training contract itself


@pytest.mark.parametrize(
    "build, extra, path",
    [
        ({"trigger": {"min_new_rows": 0}}, {}, "$.specialists[0].build.trigger.min_new_rows"),
        ({"method": "magic"}, {}, "$.specialists[0].build.method"),
        ({"training": {"stpes": 10}}, {}, "$.specialists[0].build.training"),
        ({"select": {"tool": ["x"]}}, {}, "$.specialists[0].build.select"),
        ({"gate": {"suites": ["nope"]}}, {}, "$.specialists[0].build.gate.suites"),
        ({}, {"eval_suites": []}, "$.specialists[0].build.gate.suites"),
    ],
)
def test_validate_rejects_a_bad_policy_with_its_field_path(tmp_path, build, extra, path):
    f = tmp_path / "tinygpt.project.json"
    f.write_text(json.dumps(project(build, **extra)))
    r = run_cli("validate", str(f))
    assert r.returncode == 2 and path in r.stderr, r.stderr


def test_a_policy_takes_every_method_the_training_contract_takes():
    for method in get_args(Method):
        pins = decode_json(json.dumps(project({"method": method})).encode(), ProjectPins, "p")
        assert pins.specialists[0].build.method == method


def test_policies_fill_in_the_project_and_pass_only_changed_settings():
    pins = decode_json(json.dumps(project({"training": {"steps": 7, "learning_rate": 1e-4}})).encode(), ProjectPins, "p")
    policy = pins.policies()["fs"]
    assert policy.select.project == "demo"
    assert policy.hyperparameters() == {"steps": 7}  # 1e-4 is the default
    assert policy.select.matches(project="demo", served_by=["base"], tools=[], tags={})
    narrow = msgspec.structs.replace(policy.select, tools=["mv"], metadata={"team": "ops"}, served_by=["fs"])
    assert narrow.matches(project="demo", served_by=["base", "fs"], tools=["ls", "mv"], tags={"team": "ops", "x": "y"})
    assert not narrow.matches(project="demo", served_by=["fs"], tools=["mv"], tags={"team": "dev"})
    assert not narrow.matches(project="other", served_by=["fs"], tools=["mv"], tags={"team": "ops"})
    with pytest.raises(ContractError):
        decode_json(json.dumps(project({"trigger": {"max_per_day": -1}})).encode(), ProjectPins, "p")


def test_the_screen_shows_rows_the_build_running_the_last_verdict_and_the_version_served():
    import time

    from rich.console import Console

    from tinygpt.runtime.contracts.autopilot import PolicyStatus
    from tinygpt.runtime.contracts.jobs import JobProgress
    from tinygpt.runtime.policy_view import policy_table

    now = time.time()
    train = JobProgress(job_id="f1", stage="finetune", done=12, total=24, label="fs: lora", unit="step",
                        detail="loss 0.81", started=now - 30, updated=now)
    rows = [
        PolicyStatus(specialist="fs", project="demo", rows=37, needed=50, building="0916185ee660a335", stage="finetune",
                     jobs={"finetune": "f1"}, progress=train, last_verdict="pass", last_version="3", serving="3",
                     last_numbers=["calls accuracy 0.867 vs 0.383 (+0.483, p=1.3e-08)"], last_at=now),
        PolicyStatus(specialist="sql", project="demo", rows=4, needed=50, waiting="4/50 new rows; daily cap reached (4/4 in 24 h)",
                     last_verdict="regression", last_message="not published, kept in /h/builds/sql/ab", last_at=now,
                     last_numbers=["sql-exact accuracy 0.4 vs 0.6 (-0.2, p=0.01) FAIL"]),
    ]
    console = Console(width=200, record=True)
    console.print(policy_table(rows))
    text = console.export_text()
    assert "37/50 new rows" in text and "12/24 step" in text and "finetune (build 0916185ee660" in text
    assert "pass → fs@3" in text and "calls accuracy 0.867 vs 0.383 (+0.483, p=1.3e-08)" in text
    assert re.search(r"fs\s+│\s+fs@3\s+│\s+37/50 new rows", text)
    assert "4/50 new rows · daily cap reached" in text and "regression" in text and "not published, kept in" in text
