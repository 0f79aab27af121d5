"""Bad configuration or input: a clear message (file and line for rows), exit code 2, an
"error" gate-result.json, and never a pass."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from tinygpt.runtime.contracts.evals import GateResult
from tinygpt.runtime.contracts.io import read_json

ROW = {"id": "a", "prompt": "Capital of France?", "expected": "Paris", "max_tokens": 4}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))


def gate(tmp_path: Path, suites: list[dict], rows: list[str] | None = None, extra_args=(), **project) -> int:
    """Write a project (and data.jsonl from raw `rows`), run `tinygpt eval-gate`, return its exit code."""
    from tinygpt.runtime.commands import eval_gate

    if rows is not None:
        (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n")
    doc = {"name": "bad", "base_model": project.pop("base_model"), "eval_suites": suites, **project}
    (tmp_path / "tinygpt.project.json").write_text(json.dumps(doc))
    parser = argparse.ArgumentParser()
    eval_gate.configure(parser)
    out = tmp_path / "gate-result.json"
    code = eval_gate.run(parser.parse_args(["--project", str(tmp_path / "tinygpt.project.json"), "--out", str(out), *extra_args]))
    if code == 2:
        result = read_json(out, GateResult)
        assert result.verdict == "error" and result.message
    return code


def suite(**kw) -> dict:
    return {"name": "s", "kind": "exact_match", "data": "data.jsonl", **kw}


@pytest.mark.parametrize(
    "suites, rows, message",
    [
        ([suite(data="nope.jsonl")], None, r"suite 's': data file .*nope.jsonl not found"),
        ([suite()], [json.dumps(ROW), '{"id": "b", "prompt": '], r"data.jsonl:2: not valid JSON"),
        ([suite()], [json.dumps(ROW), json.dumps({**ROW, "id": "b", "prompt": 3})], r"data.jsonl:2: Expected `str \| null`, got `int` - at `\$.prompt`"),
        ([suite()], [json.dumps({**ROW, "answer": "x"})], r"data.jsonl:1: Object contains unknown field `answer`"),
        ([suite()], [json.dumps(ROW), "", json.dumps(ROW)], r"data.jsonl:3: duplicate id 'a' \(first on line 1\)"),
        ([suite()], [json.dumps({"id": "a", "expected": "x"})], r"data.jsonl:1: a row needs exactly one of `prompt` or `messages`"),
        ([suite(kind="tool_call")], [json.dumps(ROW)], r"data.jsonl:1: a tool_call row needs `tools`"),
        ([suite(kind="json_schema")], [json.dumps(ROW)], r"data.jsonl:1: a json_schema row needs `schema`"),
        ([suite()], [""], r"suite 's': .*data.jsonl has no rows"),
        ([suite(kind="custom", scorer="no_such_module:score")], [json.dumps(ROW)], r"unknown scorer 'no_such_module:score'"),
        ([suite(kind="custom", scorer="json:nope")], [json.dumps(ROW)], r"unknown scorer 'json:nope': json has no function 'nope'"),
        ([suite(kind="custom", scorer="json:dumps", metric="f1")], [json.dumps(ROW)], r"metric 'f1' has no direction"),
        ([suite(kind="latency", metric="speed")], [json.dumps(ROW)], r"unknown latency metric 'speed'"),
        ([suite(passes=3)], [json.dumps(ROW)], r"several passes need sampling"),
        ([suite(kind="vibes")], [json.dumps(ROW)], r"\$.eval_suites\[0\].kind"),
        ([suite(), suite()], [json.dumps(ROW)], r"duplicate names in `eval_suites`: s"),
        ([], None, r"no eval suites declared"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, tiny_model_dir, capsys, suites, rows, message):
    code = gate(tmp_path, suites, rows, base_model=str(tiny_model_dir))
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, " ".join(err.split())), err


def test_missing_models_adapters_and_project_files(tmp_path, tiny_model_dir, capsys):
    rows = [json.dumps(ROW)]
    assert gate(tmp_path, [suite()], rows, base_model=str(tmp_path / "no-model")) == 2
    assert "base model: model directory not found" in capsys.readouterr().err
    assert gate(tmp_path, [suite()], rows, ["--candidate", str(tmp_path / "nope")], base_model=str(tiny_model_dir)) == 2
    assert "candidate adapter directory" in capsys.readouterr().err
    (tmp_path / "empty-adapter").mkdir()
    assert gate(tmp_path, [suite()], rows, ["--candidate", str(tmp_path / "empty-adapter")], base_model=str(tiny_model_dir)) == 2
    assert "adapter_config.json not found" in " ".join(capsys.readouterr().err.split())
    assert gate(tmp_path, [suite()], rows, ["--specialist", "ghost"], base_model=str(tiny_model_dir)) == 2
    assert "ghost is not pinned" in capsys.readouterr().err
    assert gate(tmp_path, [suite()], rows, base_model=str(tiny_model_dir), gate={"suites_file": "more.json"}) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "gate.suites_file" in err and "more.json: file not found" in err


def test_suites_file_is_read_and_a_row_the_runtime_refuses_names_its_line(tmp_path, tiny_model_dir, capsys):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {"required": ["x"]}}}}]
    (tmp_path / "tools.jsonl").write_text(json.dumps({"id": "t", "prompt": "hi", "tools": tools, "expected": []}) + "\n")
    (tmp_path / "more.json").write_text(json.dumps([{"name": "t", "kind": "tool_call", "data": "tools.jsonl"}]))
    code = gate(tmp_path, [], None, base_model=str(tiny_model_dir), gate={"suites_file": "more.json"})
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "tools.jsonl:1: the runtime refused row 't'" in err and "'not'" in err
