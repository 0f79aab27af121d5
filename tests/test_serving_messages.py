"""`POST /v1/messages` over real HTTP on the tiny model, driven by the official `anthropic` client.

The same core as chat completions: the same answer for the same request, grammar-valid
tool_use inputs under any / tool, one trajectory per conversation with reused token ids,
Anthropic's event sequence and error shape.
"""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest

from tests.serving_support import post, running
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.jobs import TrajectoryRef
from tinygpt.runtime.contracts.trajectory import Trajectory
from tinygpt.workers.ingest import examine

pytest.importorskip("tinygpt.runtime.grammar.constraint", reason="the grammar package has not landed")

KEY = "test-key"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIMER = {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1}}, "required": ["minutes"]}
TOOLS = [
    {"name": "get_weather", "description": "Weather for a city.", "input_schema": WEATHER},
    {"name": "set_timer", "description": "Start a timer.", "input_schema": TIMER},
]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ANY_ONE = {"type": "any", "disable_parallel_tool_use": True}


@pytest.fixture(scope="module")
def rt(tiny_model_dir, tmp_path_factory):
    with running(tiny_model_dir, tmp_path_factory.mktemp("messages"), api_key=KEY, max_tokens=200) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(rt):
    return anthropic.Anthropic(base_url=rt.url, api_key=KEY, max_retries=0)


def trajectory(rt, tid: str) -> Trajectory:
    rt.recorder.flush().result()
    return read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory)


def test_text_answer_equals_chat_completions_on_the_same_request(rt, client):
    chat = openai.OpenAI(base_url=rt.url + "/v1", api_key=KEY, max_retries=0).chat.completions.create(
        model="base", messages=[{"role": "system", "content": "Be brief."}, *ASK], max_tokens=10, temperature=0
    )
    m = client.messages.create(model="base", system="Be brief.", messages=ASK, max_tokens=10, extra_body={"temperature": 0})
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_") and m.model == "base"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == chat.choices[0].message.content
    assert m.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[chat.choices[0].finish_reason]
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == chat.usage.prompt_tokens
    assert m.usage.output_tokens == chat.usage.completion_tokens


def test_stream_is_anthropics_event_sequence_and_equals_the_answer(client):
    kw = dict(model="base", messages=ASK, max_tokens=12, extra_body={"temperature": 0})
    full = client.messages.create(**kw)
    events = list(client.messages.create(**kw, stream=True))
    types = [e.type for e in events]
    n_deltas = types.count("content_block_delta")
    assert types == ["message_start", "content_block_start", *["content_block_delta"] * n_deltas, "content_block_stop",
                     "message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens + events[0].message.usage.cache_read_input_tokens > 0
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == full.content[0].text
    assert events[-2].delta.stop_reason == full.stop_reason and events[-2].usage.output_tokens == full.usage.output_tokens
    # The SDK's stream helper assembles the same message.
    with client.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == full.content[0].text and final.stop_reason == full.stop_reason


@pytest.mark.parametrize("seed", range(3))
def test_every_forced_tool_use_input_validates(client, seed):
    m = client.messages.create(model="base", messages=ASK, max_tokens=200, tools=TOOLS, tool_choice=ANY_ONE,
                               extra_body={"temperature": 1.0})
    assert m.stop_reason == "tool_use"
    (block,) = [b for b in m.content if b.type == "tool_use"]
    assert block.id.startswith("toolu_")
    jsonschema.validate(block.input, SCHEMAS[block.name])


def test_tool_choice_tool_names_the_tool_and_streams_input_json(client):
    kw = dict(model="base", messages=ASK, max_tokens=200, tools=TOOLS, extra_body={"temperature": 1.0},
              tool_choice={"type": "tool", "name": "set_timer", "disable_parallel_tool_use": True})
    events = list(client.messages.create(**kw, stream=True))
    starts = [e.content_block for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta"
                      and e.delta.type == "input_json_delta")
    assert [s.name for s in starts] == ["set_timer"] and starts[0].input == {}
    jsonschema.validate(json.loads(partial), TIMER)
    assert events[-2].delta.stop_reason == "tool_use"
    with client.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    (block,) = [b for b in final.content if b.type == "tool_use"]
    assert block.name == "set_timer" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, TIMER)


def test_tool_use_round_trip_with_tool_result_is_one_trajectory(rt, client):
    raw = client.messages.with_raw_response.create(model="base", messages=ASK, max_tokens=200, tools=TOOLS,
                                                   tool_choice=ANY_ONE)
    first, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    (use,) = [b for b in first.content if b.type == "tool_use"]
    follow = ASK + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": '{"ok": true, "temp": 21}'},
                                     {"type": "text", "text": "Thanks!"}]},
    ]
    raw2 = client.messages.with_raw_response.create(model="base", messages=follow, max_tokens=4, tools=TOOLS,
                                                    tool_choice={"type": "none"})
    second = raw2.parse()
    assert all(b.type == "text" for b in second.content)
    assert raw2.headers["x-tinygpt-trajectory"] == tid and raw2.headers["x-tinygpt-step"] == "1"
    s0, s1 = trajectory(rt, tid).steps
    assert s0.constraint == "tools" and s0.finish_reason == "tool_calls" and s0.request_id == first.id
    assert [(c.id, c.name, c.valid) for c in s0.tool_calls] == [(use.id, use.name, True)]
    assert [(r.tool_call_id, r.ok) for r in s0.tool_results] == [(use.id, True)]
    # The tool_use input came back as an object; the model's own text of it was reused.
    assert s1.prompt_ids[: len(s0.prompt_ids) + len(s0.output_ids)] == s0.prompt_ids + s0.output_ids
    assert not s1.prefix_mismatch


def test_an_error_tool_result_is_recorded_as_failed(rt, client):
    raw = client.messages.with_raw_response.create(model="base", messages=ASK, max_tokens=200, tools=TOOLS,
                                                   tool_choice=ANY_ONE)
    first, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    (use,) = [b for b in first.content if b.type == "tool_use"]
    follow = ASK + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "city not found",
                                      "is_error": True}]},
    ]
    client.messages.create(model="base", messages=follow, max_tokens=2, tools=TOOLS)
    assert [(r.tool_call_id, r.ok) for r in trajectory(rt, tid).steps[0].tool_results] == [(use.id, False)]


def test_stop_sequence_is_reported(client):
    free = client.messages.create(model="base", messages=ASK, max_tokens=12, extra_body={"temperature": 0}).content[0].text
    assert len(free) >= 3, "the tiny model should say something"
    stop = free[1:3]
    m = client.messages.create(model="base", messages=ASK, max_tokens=12, stop_sequences=[stop],
                               extra_body={"temperature": 0})
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", stop)
    # An empty answer is no content block at all.
    assert "".join(b.text for b in m.content) == free[: free.index(stop)]


def test_count_tokens_is_the_prompt_the_request_would_use(client):
    kw = dict(model="base", system="Be brief.", messages=ASK, tools=TOOLS)
    counted = client.messages.count_tokens(**kw).input_tokens
    m = client.messages.create(**kw, max_tokens=1)
    assert counted == m.usage.input_tokens + m.usage.cache_read_input_tokens


def test_key_as_x_api_key_or_bearer_and_errors_in_anthropics_shape(rt):
    body = {"model": "base", "messages": ASK, "max_tokens": 1}
    assert post(rt.port, "/v1/messages", body, {"x-api-key": KEY})[0] == 200
    assert post(rt.port, "/v1/messages", body, {"Authorization": f"Bearer {KEY}"})[0] == 200
    status, raw = post(rt.port, "/v1/messages", body, {"x-api-key": "wrong"})
    assert status == 401 and json.loads(raw) == {
        "type": "error", "error": {"type": "authentication_error", "message": json.loads(raw)["error"]["message"]}}
    status, raw = post(rt.port, "/v1/messages", b"{nope", {"x-api-key": KEY})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_the_admin_key_is_not_an_api_key(tiny_model_dir, tmp_path):
    with running(tiny_model_dir, tmp_path, api_key=KEY, admin_key="admin", record=False) as rt:
        body = {"model": "base", "messages": ASK, "max_tokens": 1}
        assert post(rt.port, "/v1/messages", body, {"x-api-key": "admin"})[0] == 401
        assert post(rt.port, "/v1/messages", body, {"x-api-key": KEY})[0] == 200


@pytest.mark.parametrize(
    "kwargs, status, kind, needle",
    [
        (dict(model="no-such-model"), 404, "not_found_error", "no-such-model"),
        (dict(max_tokens=None), 400, "invalid_request_error", "max_tokens"),
        (dict(max_tokens=100_000), 400, "invalid_request_error", "context"),
        (dict(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]), 400, "invalid_request_error", "image"),
        (dict(messages=ASK + [{"role": "assistant", "content": "Sure"}]), 400, "invalid_request_error", "prefill"),
        (dict(tools=[{"type": "web_search_20250305", "name": "web_search"}]), 400, "invalid_request_error", "tools[0]"),
        (dict(tools=[{"name": "bad name!", "input_schema": {"type": "object"}}]), 400, "invalid_request_error", "name"),
        (dict(tool_choice={"type": "any"}), 400, "invalid_request_error", "tool_choice"),
        (dict(thinking={"type": "enabled", "budget_tokens": 1024}), 400, "invalid_request_error", "thinking"),
        (dict(top_k=5), 400, "invalid_request_error", "top_k"),
        (dict(temperature=1.5), 400, "invalid_request_error", "temperature"),
    ],
)
def test_bad_input_is_an_anthropic_error(rt, kwargs, status, kind, needle):
    body = {k: v for k, v in ({"model": "base", "messages": ASK, "max_tokens": 4} | kwargs).items() if v is not None}
    code, raw = post(rt.port, "/v1/messages", body, {"x-api-key": KEY})
    data = json.loads(raw)
    assert code == status and data["type"] == "error" and data["error"]["type"] == kind
    assert needle in data["error"]["message"]


def test_the_client_raises_its_own_error_types(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope", messages=ASK, max_tokens=2)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="base", messages=ASK, max_tokens=2, tool_choice={"type": "tool", "name": "x"})


def test_a_messages_trajectory_is_ingested_like_any_other(tiny_model_dir, tmp_path):
    flushed = []
    with running(tiny_model_dir, tmp_path, on_flushed=flushed.append, max_tokens=200) as rt:
        client = anthropic.Anthropic(base_url=rt.url, api_key="x", max_retries=0)
        first = client.messages.create(model="base", messages=ASK, max_tokens=200, tools=TOOLS, tool_choice=ANY_ONE)
        (use,) = [b for b in first.content if b.type == "tool_use"]
        client.messages.create(model="base", max_tokens=3, tools=TOOLS, messages=ASK + [
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21C"}]},
        ])
        rt.recorder.seal_all().result()
    (path,) = flushed
    record, traj = examine(TrajectoryRef(path=str(path), sha256=""))
    assert record.status == "ingested", record.reason
    assert record.steps == 2 and traj.steps[0].tool_results[0].tool_call_id == use.id


def test_fuzz_malformed_requests_are_anthropic_4xx_then_a_valid_one_succeeds(rt, client):
    import random

    from tests.test_serving_http import _mutations

    statuses = []
    for body in _mutations({"model": "base", "messages": ASK, "max_tokens": 2}, random.Random(99)):
        status, raw = post(rt.port, "/v1/messages", body, {"x-api-key": KEY})
        statuses.append(status)
        if status != 200:
            assert json.loads(raw)["type"] == "error", raw
    assert all(s == 200 or 400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert sum(400 <= s < 500 for s in statuses) > 250
    assert client.messages.create(model="base", messages=ASK, max_tokens=2).type == "message"


def test_a_specialist_answers_by_model_name_through_both_apis(rt, client, tmp_path):
    from tests.serving_support import write_lora_adapter

    rt.load_adapter("spec", str(write_lora_adapter(tmp_path / "spec", rt.model_dir, seed=4, std=0.2)), "1")
    try:
        raw = client.messages.with_raw_response.create(model="spec", messages=ASK, max_tokens=3)
        assert raw.headers["x-tinygpt-model"] == "spec@1" and raw.parse().model == "spec"
        oa = openai.OpenAI(base_url=rt.url + "/v1", api_key=KEY, max_retries=0)
        raw = oa.responses.with_raw_response.create(model="spec@1", input="hi", max_output_tokens=3)
        assert raw.headers["x-tinygpt-model"] == "spec@1" and raw.parse().model == "spec@1"
        tid = raw.headers["x-tinygpt-trajectory"]
        step = trajectory(rt, tid).steps[0]
        assert (step.model, step.adapter_version) == ("spec@1", "1")
    finally:
        rt.unload_adapter("spec")
