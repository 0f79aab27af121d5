"""BFCL import: question + function files and possible answers become rows that score
known-correct calls 1 and known-wrong calls 0 (single, multiple-choice, parallel, nested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinygpt.workers.evalgate.bfcl import category, load_bfcl
from tinygpt.workers.evalgate.rows import Call, GateInputError, Output
from tinygpt.workers.evalgate.scorers import check_tool_calls

DATA = Path(__file__).parent / "data" / "evals" / "bfcl"
QUESTIONS = DATA / "BFCL_v3_sample.json"


@pytest.fixture(scope="module")
def rows():
    return {item.id: item for item in load_bfcl(QUESTIONS)}


def answer(*calls: tuple[str, dict]) -> Output:
    return Output(calls=[Call(name, json.dumps(args)) for name, args in calls])


def score(rows, row_id: str, out: Output) -> tuple[float, str]:
    row = rows[row_id].row
    return check_tool_calls(out, row.expected, row.tools)


def test_rows_carry_openai_tools_json_schema_types_and_line_numbers(rows):
    assert list(rows) == ["simple_0", "simple_1", "multiple_0", "multiple_1", "parallel_0", "parallel_multiple_0", "irrelevance_0"]
    simple = rows["simple_0"]
    assert simple.line == 1 and simple.row.messages == [{"role": "user", "content": "What is the area of a triangle with base 10 and height 5?"}]
    fn = simple.row.tools[0]["function"]
    # Dots are not allowed in OpenAI function names; the expected call uses the same name.
    assert fn["name"] == "geometry_triangle_area" and simple.row.expected[0]["name"] == "geometry_triangle_area"
    assert fn["parameters"]["type"] == "object" and fn["parameters"]["properties"]["base"]["type"] == "integer"
    stats = rows["simple_1"].row.tools[0]["function"]["parameters"]["properties"]
    assert stats["values"] == {"type": "array", "items": {"type": "number"}}
    assert stats["options"]["type"] == "object"
    assert rows["multiple_1"].row.tools[0]["function"]["parameters"]["properties"]["stops"]["type"] == "array"
    # BFCL's "optional" flag is not JSON Schema: dropped rather than sent to the grammar.
    timer = rows["parallel_multiple_0"].row.tools[1]["function"]["parameters"]["properties"]["label"]
    assert "optional" not in timer
    assert rows["irrelevance_0"].row.expected == [] and category("live_parallel_multiple_12") == "live_parallel_multiple"


@pytest.mark.parametrize(
    "row_id, calls",
    [
        ("simple_0", [("geometry_triangle_area", {"base": 10, "height": 5})]),
        ("simple_0", [("geometry_triangle_area", {"base": 10, "height": 5, "unit": "Units"})]),  # case-insensitive strings
        ("simple_1", [("stats_mean", {"values": [1.5, 2.5, 3], "options": {"round": 1}})]),  # int ok for a float item
        ("multiple_0", [("get_weather", {"city": "Paris, France", "unit": "celsius"})]),
        ("multiple_1", [("plan_route", {"stops": ["Rome", "Florence", "Milan"], "avoid_tolls": True})]),
        ("parallel_0", [("get_weather", {"city": "Berlin"}), ("get_weather", {"city": "Paris"})]),  # any order
        ("parallel_multiple_0", [("set_timer", {"minutes": 20}), ("convert_currency", {"amount": 100, "from": "USD", "to": "EUR"})]),
        ("irrelevance_0", []),
    ],
)
def test_known_correct_calls_score_one(rows, row_id, calls):
    assert score(rows, row_id, answer(*calls)) == (1.0, "")


@pytest.mark.parametrize(
    "row_id, calls, reason",
    [
        ("simple_0", [("geometry_triangle_area", {"base": 10, "height": 6})], "'height': 6 is not one of [5]"),
        ("simple_0", [("geometry_triangle_area", {"base": "10", "height": 5})], "'base': '10' is not of type integer"),
        ("simple_0", [("geometry_triangle_area", {"base": 10})], "missing required argument 'height'"),
        ("simple_0", [("geometry_triangle_area", {"base": 10, "height": 5, "color": "red"})], "unexpected argument 'color'"),
        ("simple_1", [("stats_mean", {"values": [1.5, 2.5]})], "'values'"),
        ("simple_1", [("stats_mean", {"values": [1.5, 2.5, 3], "options": {"round": 2}})], "'options'"),
        ("multiple_0", [("convert_currency", {"amount": 1, "from": "A", "to": "B"})], "called 'convert_currency', expected 'get_weather'"),
        ("multiple_1", [("plan_route", {"stops": ["Rome", "Milan", "Florence"], "avoid_tolls": True})], "'stops'"),
        ("multiple_1", [("plan_route", {"stops": ["Rome", "Florence", "Milan"], "avoid_tolls": 1})], "not of type boolean"),
        ("parallel_0", [("get_weather", {"city": "Paris"})], "expected 2 call(s), got 1"),
        ("parallel_0", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Paris"})], "Berlin"),
        ("parallel_multiple_0", [("set_timer", {"minutes": 20}), ("convert_currency", {"amount": 100, "from": "USD", "to": "GBP"})], "'to'"),
        ("irrelevance_0", [("get_weather", {"city": "Paris"})], "expected no call, got 1"),
    ],
)
def test_known_wrong_calls_score_zero_with_the_reason(rows, row_id, calls, reason):
    got, detail = score(rows, row_id, answer(*calls))
    assert got == 0.0 and reason in detail, detail


def test_unparseable_arguments_and_text_answers_score_zero(rows):
    assert score(rows, "simple_0", Output(calls=[Call("geometry_triangle_area", '{"base": 10,')])) == (
        0.0, "call 1 (geometry_triangle_area): arguments are not JSON",
    )
    assert score(rows, "simple_0", Output(content="The area is 25.")) == (0.0, "expected 1 call(s), got 0")


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_answers_unsupported_categories_and_bad_lines_name_file_and_line(tmp_path):
    fn = {"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}
    q = _write(tmp_path / "BFCL_v3_x.json", [{"id": "simple_0", "question": [[{"role": "user", "content": "x"}]], "function": [fn]}])
    with pytest.raises(GateInputError, match=r"possible_answer/BFCL_v3_x.json: file not found"):
        load_bfcl(q)
    _write(tmp_path / "possible_answer" / "BFCL_v3_x.json", [{"id": "other_0", "ground_truth": [{"f": {"x": [1]}}]}])
    with pytest.raises(GateInputError, match=r"BFCL_v3_x.json:1: no possible answer for 'simple_0'"):
        load_bfcl(q)
    (tmp_path / "bad.json").write_text('{"id": "simple_0", "question": "x", "function": []}\n{"id": \n')
    with pytest.raises(GateInputError, match=r"bad.json:2: not valid JSON"):
        load_bfcl(tmp_path / "bad.json", q)
    answers = tmp_path / "possible_answer" / "BFCL_v3_x.json"
    multi = _write(tmp_path / "m.json", [{"id": "multi_turn_base_0", "question": [[{"role": "user", "content": "a"}], []], "function": [fn]}])
    with pytest.raises(GateInputError, match=r"m.json:1: BFCL category 'multi_turn_base' is not supported"):
        load_bfcl(multi, answers)
    java = _write(tmp_path / "j.json", [{"id": "other_0", "question": "x", "function": [{"name": "f", "parameters": {"type": "dict", "properties": {"m": {"type": "HashMap"}}}}]}])
    with pytest.raises(GateInputError, match=r"j.json:1: unsupported BFCL parameter type 'HashMap'"):
        load_bfcl(java, answers)
