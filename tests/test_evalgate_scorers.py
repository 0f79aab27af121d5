"""Scorers: tool calls (acceptable values, optional args, types, parallel, none), exact match,
JSON-schema validity, latency metrics and custom `module:function` scorers; metric directions."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tinygpt.runtime.contracts.evals import EvalSuite
from tinygpt.workers.evalgate.rows import Call, EvalRow, Item, Output
from tinygpt.workers.evalgate.scorers import ScorerError, check_tool_calls, metric_spec, scorer_for

TOOLS = [
    {"type": "function", "function": {"name": "set_timer", "parameters": {
        "type": "object", "properties": {"minutes": {"type": "integer"}, "label": {"type": "string"}, "loud": {"type": "boolean"}},
        "required": ["minutes"]}}},
]
EXPECTED = [{"name": "set_timer", "arguments": {"minutes": [20, 21], "label": ["Pasta sauce", ""], "loud": [False, ""]}}]


def calls(*args: dict) -> Output:
    return Output(calls=[Call("set_timer", json.dumps(a)) for a in args])


@pytest.mark.parametrize(
    "args, ok",
    [
        ({"minutes": 20}, True),
        ({"minutes": 21, "label": "pasta-sauce"}, True),  # loose strings: case, -, spaces
        ({"minutes": 20, "label": "Pasta sauce", "loud": False}, True),
        ({"minutes": 20.0}, False),  # an integer parameter wants an integer
        ({"minutes": True}, False),  # and a bool is never an integer
        ({"minutes": 20, "loud": 0}, False),
        ({"minutes": 22}, False),
        ({"label": "Pasta sauce"}, False),
        ({"minutes": 20, "color": "red"}, False),
    ],
)
def test_tool_call_arguments(args, ok):
    assert check_tool_calls(calls(args), EXPECTED, TOOLS)[0] == float(ok)


def test_exact_strings_option_and_missing_non_optional_argument():
    exp = [{"name": "set_timer", "arguments": {"minutes": [20], "label": ["Pasta"]}}]
    assert check_tool_calls(calls({"minutes": 20, "label": "pasta"}), exp, TOOLS)[0] == 1.0
    assert check_tool_calls(calls({"minutes": 20, "label": "pasta"}), exp, TOOLS, loose=False) == (
        0.0, "expected call 1: argument 'label': 'pasta' is not one of ['Pasta']",
    )
    assert check_tool_calls(calls({"minutes": 20}), exp, TOOLS) == (0.0, "expected call 1: missing argument 'label'")


def test_parallel_calls_match_in_any_order_but_each_only_once():
    exp = [{"name": "set_timer", "arguments": {"minutes": [5]}}, {"name": "set_timer", "arguments": {"minutes": [9]}}]
    assert check_tool_calls(calls({"minutes": 9}, {"minutes": 5}), exp, TOOLS)[0] == 1.0
    assert check_tool_calls(calls({"minutes": 5}, {"minutes": 5}), exp, TOOLS)[0] == 0.0
    assert check_tool_calls(calls({"minutes": 5}), exp, TOOLS) == (0.0, "expected 2 call(s), got 1")
    # Scalars are shorthand for a single acceptable value.
    assert check_tool_calls(calls({"minutes": 5}), [{"name": "set_timer", "arguments": {"minutes": 5}}], TOOLS)[0] == 1.0


def item(kind_row: dict) -> Item:
    return Item("x", 3, EvalRow(**kind_row))


def test_exact_match_normalization_and_alternatives():
    suite = EvalSuite(name="e", kind="exact_match", data="d", options={"normalize": ["strip", "lower", "collapse_whitespace"]})
    score = scorer_for(suite)
    row = item({"prompt": "p", "expected": ["New York", "NYC"]})
    assert score(row, Output(content="  new   york \n"))[0] == 1.0
    assert score(row, Output(content="nyc"))[0] == 1.0
    assert score(row, Output(content="Boston"))[0] == 0.0
    assert scorer_for(EvalSuite(name="e", kind="exact_match", data="d"))(row, Output(content="new york"))[0] == 0.0
    with pytest.raises(ScorerError, match="unknown normalize step"):
        scorer_for(EvalSuite(name="e", kind="exact_match", data="d", options={"normalize": ["stem"]}))


def test_json_schema_validity_and_expected_value():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}
    score = scorer_for(EvalSuite(name="j", kind="json_schema", data="d"))
    row = item({"prompt": "p", "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}})
    assert score(row, Output(content='{"n": 3}')) == (1.0, "")
    assert score(row, Output(content='{"n": 0}'))[0] == 0.0
    assert score(row, Output(content="n=3")) == (0.0, "the answer is not JSON")
    pinned = item({"prompt": "p", "schema": schema, "expected": {"n": 2}})
    assert score(pinned, Output(content='{"n": 3}')) == (0.0, "valid, but not the expected value")


def test_latency_metrics_and_their_directions():
    out = Output(content="x", completion_tokens=11, ttft_s=0.2, latency_s=1.2)
    for metric, value, direction, q in [
        ("ttft_ms", 200.0, "lower", None), ("ttft_p95_ms", 200.0, "lower", 95.0),
        ("latency_p50_ms", 1200.0, "lower", 50.0), ("tokens_per_s", 10.0, "higher", None),
    ]:
        suite = EvalSuite(name="l", kind="latency", data="d", metric=metric)
        assert scorer_for(suite)(item({"prompt": "p"}), out)[0] == pytest.approx(value)
        spec = metric_spec(suite)
        assert (spec.direction, spec.percentile) == (direction, q)
    with pytest.raises(ScorerError, match="unknown latency metric 'speed'"):
        metric_spec(EvalSuite(name="l", kind="latency", data="d", metric="speed"))
    with pytest.raises(ScorerError, match="measures `accuracy`"):
        metric_spec(EvalSuite(name="t", kind="tool_call", data="d", metric="f1"))


def test_custom_scorers_and_a_metric_without_direction(tmp_path, monkeypatch):
    (tmp_path / "my_scorers.py").write_text(textwrap.dedent("""
        def length(row, output):
            return len(output.content or ""), "chars"
        def says_hi(row, output):
            return "hi" in (output.content or "")
        def broken(row, output):
            return "yes"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_scorers", raising=False)
    out, row = Output(content="hi there"), item({"prompt": "p"})
    length = EvalSuite(name="c", kind="custom", data="d", metric="chars", direction="lower", scorer="my_scorers:length")
    assert scorer_for(length)(row, out) == (8.0, "chars")
    assert scorer_for(EvalSuite(name="c", kind="custom", data="d", scorer="my_scorers:says_hi"))(row, out) == (1.0, "")
    with pytest.raises(ScorerError, match="returned str"):
        scorer_for(EvalSuite(name="c", kind="custom", data="d", scorer="my_scorers:broken"))(row, out)
    with pytest.raises(ScorerError, match="metric 'chars' has no direction"):
        metric_spec(EvalSuite(name="c", kind="custom", data="d", metric="chars", scorer="my_scorers:length"))
    with pytest.raises(ScorerError, match="unknown scorer 'my_scorers:nope'"):
        scorer_for(EvalSuite(name="c", kind="custom", data="d", scorer="my_scorers:nope"))
    with pytest.raises(ScorerError, match="cannot import 'no_such_module'"):
        scorer_for(EvalSuite(name="c", kind="custom", data="d", scorer="no_such_module:f"))
