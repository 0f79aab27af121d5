"""Grammar-constrained answers through the server on the tiny model (needs runtime/grammar).

A random model left alone writes garbage; under the grammar every tool call it
returns must parse and validate against its function's schema, and JSON answers must
validate against theirs. Schemas the grammar cannot enforce are a 400, never an
unconstrained 200.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.serving_support import running
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory

pytest.importorskip("tinygpt.runtime.grammar.constraint", reason="the grammar package has not landed")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIMER = {"type": "object", "properties": {"minutes": {"type": "number"}, "label": {"type": "string", "maxLength": 10}}, "required": ["minutes"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "set_timer", "description": "Start a timer.", "parameters": TIMER}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def rt(tiny_model_dir, tmp_path_factory):
    with running(tiny_model_dir, tmp_path_factory.mktemp("grammar"), max_tokens=200) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(rt):
    return openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("seed", range(6))
def test_every_required_tool_call_parses_and_validates(client, seed):
    r = client.chat.completions.create(
        model="base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        temperature=1.0, seed=seed,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_function_is_the_one_called(client):
    r = client.chat.completions.create(
        model="base", messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "set_timer"}},
        parallel_tool_calls=False, temperature=1.0, seed=3,
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "set_timer"
    jsonschema.validate(json.loads(call.function.arguments), TIMER)


def test_json_schema_and_json_object_answers_validate(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 12}, "score": {"type": "integer"}},
              "required": ["answer", "score"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "graded", "schema": schema, "strict": True}}
    for seed in range(3):
        r = client.chat.completions.create(model="base", messages=ASK, response_format=fmt, temperature=1.0, seed=seed)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client.chat.completions.create(model="base", messages=ASK, response_format={"type": "json_object"}, seed=1)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "no_such_tool"}}),
        dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}],
             tool_choice="required"),
        dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "http://elsewhere/x"}}}}}),
    ],
)
def test_what_the_grammar_cannot_enforce_is_a_400(client, kwargs):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="base", messages=ASK, **kwargs)
    assert e.value.body["message"]


def test_constrained_turns_are_recorded_and_reused_by_the_next_turn(rt, client):
    raw = client.chat.completions.with_raw_response.create(
        model="base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, temperature=0
    )
    first, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    (call,) = first.choices[0].message.tool_calls
    follow = ASK + [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": '{"ok": true}'}]
    client.chat.completions.create(model="base", messages=follow, tools=TOOLS, tool_choice="none", max_tokens=3)
    rt.recorder.flush().result()
    s0, s1 = read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory).steps
    assert s0.constraint == "tools" and s0.tool_calls[0].valid is True
    assert s1.prompt_ids[: len(s0.prompt_ids) + len(s0.output_ids)] == s0.prompt_ids + s0.output_ids
    assert not s1.prefix_mismatch
    assert rt.metrics.constraint.count() > 0


def test_forced_tokens_are_fed_recorded_and_not_trained_on(rt, client):
    """A named function's skeleton is forced: fed in one step, recorded as output ids,
    marked in Step.forced, and masked out of the loss like prompt tokens — except the
    opening and name the named tool_choice imposed (Step.steered), which a kept trajectory
    trains on as the choice."""
    from tinygpt.workers.tokens import sequences

    before = rt.metrics.forced_tokens.value()
    raw = client.chat.completions.with_raw_response.create(
        model="base", messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, temperature=1.0, seed=5,
    )
    r, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    (call,) = r.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert rt.metrics.forced_tokens.value() > before
    rt.recorder.flush().result()
    traj = read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory)
    (step,) = traj.steps
    assert step.forced and all(0 <= i < len(step.output_ids) for i in step.forced)
    assert all(step.logprobs[i] == 0.0 for i in step.forced)
    tokenizer = rt.engine.tokenizer
    # The skeleton after the first sampled "<" is forced: the marker, the function name.
    forced_text = tokenizer.decode([step.output_ids[i] for i in step.forced])
    assert 'tool_call>\n{"name": "get_weather", "arguments": {"' in forced_text
    assert step.steered and set(step.steered) < set(step.forced)
    assert "get_weather" in tokenizer.decode([step.output_ids[i] for i in step.steered])
    (seq,) = sequences(traj)
    offset = len(step.prompt_ids)
    for i in range(len(step.output_ids)):
        assert seq.loss_mask[offset + i] == (0 if i in step.forced and i not in step.steered else 1)


def test_grammar_compile_time_is_exported(rt, client):
    client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=5)
    text = rt.metrics.render()
    assert 'tinygpt_grammar_compile_seconds_bucket{le="0.0005"}' in text
    assert 'tinygpt_grammar_compile_seconds_bucket{le="10"}' in text
    assert rt.metrics.grammar_compile.count() > 0


def test_hostile_pattern_is_answered_and_does_not_hold_others(client):
    """`^(a|b)*a(a|b){17}$` stalled the old DFA compiler for seconds; now it compiles at once
    and is enforced, while another request decodes beside it."""
    import threading

    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|b)*a(a|b){17}$"}}, "required": ["s"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "h", "schema": schema}}
    other: list = []
    t = threading.Thread(target=lambda: other.append(client.chat.completions.create(model="base", messages=ASK, max_tokens=8)))
    t.start()
    r = client.chat.completions.create(model="base", messages=ASK, response_format=fmt, temperature=1.0, seed=2, max_tokens=200)
    t.join()
    assert other and other[0].choices[0].finish_reason in ("stop", "length")
    if r.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    else:
        assert r.choices[0].finish_reason == "length"


def test_a_grammar_over_its_parser_limits_mid_decode_is_a_400_for_that_request_only(client, monkeypatch):
    from tinygpt.runtime.grammar import compiled

    monkeypatch.setitem(compiled.LIMIT_SETTINGS, "max_lexer_states", 5)
    schema = {"type": "object", "properties": {"limits_test": {"type": "string"}}, "required": ["limits_test"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "limits", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="base", messages=ASK, response_format=fmt, max_tokens=50)
    assert "parser limits" in e.value.body["message"]
    monkeypatch.undo()
    ok = client.chat.completions.create(model="base", messages=ASK, max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")
