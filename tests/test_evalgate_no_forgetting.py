"""No forgetting: the shipped general tool-calling suite and the rule that fails only a clear loss."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from tests.test_evalgate_verdict import HIGHER, report
from tinygpt.runtime.contracts.evals import EvalSuite
from tinygpt.runtime.contracts.jobs import EvalJob
from tinygpt.runtime.contracts.project import ProjectPins
from tinygpt.workers.evalgate.rows import GateInputError
from tinygpt.workers.evalgate.suites import check_suite, data_files, declared_suites, load_items
from tinygpt.workers.evalgate import judge
from tinygpt.workers.evalgate.rules import GENERAL_TOOLS, NO_FORGETTING, general_tools_suite

SIGNIFICANT = EvalSuite(name="s", kind="tool_call", data="d", regression="significant")


def test_a_clear_loss_fails_whatever_the_threshold_says():
    base = report([1.0] * 50)
    v = judge(msgspec.structs.replace(SIGNIFICANT, threshold=0.5), HIGHER, report([1.0] * 30 + [0.0] * 20), base)
    assert not v.passed and v.significant and "a significant loss (no forgetting)" in v.reason


def test_a_loss_that_could_be_noise_is_tolerated_and_said_so():
    base = report([1.0] * 50)
    v = judge(SIGNIFICANT, HIGHER, report([1.0] * 48 + [0.0] * 2), base)
    assert v.passed and not v.significant and "tolerated (only a significant loss fails this suite)" in v.reason
    assert judge(SIGNIFICANT, HIGHER, report([1.0] * 50), report([1.0] * 45 + [0.0] * 5)).passed  # better


def test_the_shipped_suite_is_a_bfcl_simple_sample_with_answers():
    suite = general_tools_suite()
    check_suite(suite)
    suite_dir = Path("/nonexistent")  # the suite's paths are absolute: any project dir works
    questions, answers = data_files(suite, suite_dir)
    assert questions.is_absolute() and answers.name == questions.name and answers.parent.name == "possible_answer"
    items = load_items(suite, suite_dir)
    assert len(items) == 50 and all(i.row.metadata["bfcl_category"] == "simple_python" for i in items)
    assert all(i.row.expected and i.row.tools for i in items)
    assert len({i.id for i in items}) == 50


def test_the_rule_adds_the_suite_from_the_project_or_the_job(tmp_path):
    own = EvalSuite(name="mine", kind="exact_match", data="d.jsonl")
    plain = ProjectPins(name="p", eval_suites=[own])
    assert [s.name for s in declared_suites(plain, tmp_path)] == ["mine"]
    ruled = msgspec.convert({"name": "p", "eval_suites": [msgspec.to_builtins(own)], "gate": {"rules": [NO_FORGETTING]}}, ProjectPins)
    suites = declared_suites(ruled, tmp_path)
    assert [s.name for s in suites] == ["mine", GENERAL_TOOLS] and suites[1].regression == "significant"
    assert [s.name for s in declared_suites(plain, tmp_path, [NO_FORGETTING])] == ["mine", GENERAL_TOOLS]
    # A project that declares its own suite of that name keeps it (no duplicate).
    mine = msgspec.structs.replace(general_tools_suite(), threshold=0.05, regression="threshold")
    assert declared_suites(ProjectPins(name="p", eval_suites=[mine]), tmp_path, [NO_FORGETTING]) == [mine]
    with pytest.raises(GateInputError, match="unknown promotion rule 'forget-freely'"):
        declared_suites(plain, tmp_path, ["forget-freely"])


def test_rules_are_contract_values():
    job = msgspec.json.decode(json.dumps({"project_file": "p", "specialist": "s", "candidate_dir": "c", "output_dir": "o",
                                          "rules": ["no-forgetting"]}), type=EvalJob)
    assert job.rules == ["no-forgetting"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "p", "gate": {"rules": ["nope"]}}, ProjectPins)
