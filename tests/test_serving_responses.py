"""`POST /v1/responses` over real HTTP on the tiny model, driven by the official `openai` client.

The same core as chat completions: the same answer for the same request, grammar-valid
function calls under `required`, one trajectory per chain with reused token ids, and
OpenAI error objects for bad input.
"""

from __future__ import annotations

import json

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
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city.", "parameters": WEATHER}]
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def rt(tiny_model_dir, tmp_path_factory):
    with running(tiny_model_dir, tmp_path_factory.mktemp("responses"), api_key=KEY, max_tokens=200) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(rt):
    return openai.OpenAI(base_url=rt.url + "/v1", api_key=KEY, max_retries=0)


def trajectory(rt, tid: str) -> Trajectory:
    rt.recorder.flush().result()
    return read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory)


def test_text_answer_equals_chat_completions_on_the_same_request(client):
    kw = dict(model="base", temperature=0)
    chat = client.chat.completions.create(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": ASK}], max_tokens=10, **kw
    )
    r = client.responses.create(instructions="Be brief.", input=ASK, max_output_tokens=10, **kw)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "base"
    (message,) = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens and r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    want = "incomplete" if chat.choices[0].finish_reason == "length" else "completed"
    assert r.status == want and (r.incomplete_details is not None) == (want == "incomplete")


def test_stream_is_the_responses_event_sequence_and_equals_the_answer(client):
    kw = dict(model="base", input=ASK, max_output_tokens=12, temperature=0)
    full = client.responses.create(**kw)
    events = list(client.responses.create(**kw, stream=True))
    types = [e.type for e in events]
    assert types[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete" if full.status == "incomplete" else "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == full.output_text == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == full.usage.output_tokens


def test_function_call_round_trip_with_function_call_output_is_one_trajectory(rt, client):
    raw = client.responses.with_raw_response.create(
        model="base", input=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, temperature=1.0,
    )
    first, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and first.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    # The Agents-SDK way: resend the whole history with the call's output appended.
    history = [{"role": "user", "content": ASK}, *first.output]
    follow = history + [{"type": "function_call_output", "call_id": call.call_id, "output": '{"ok": true, "temp": 21}'}]
    raw2 = client.responses.with_raw_response.create(model="base", input=follow, tools=TOOLS, tool_choice="none",
                                                     max_output_tokens=4)
    assert raw2.headers["x-tinygpt-trajectory"] == tid and raw2.headers["x-tinygpt-step"] == "1"
    s0, s1 = trajectory(rt, tid).steps
    assert s0.constraint == "tools" and s0.finish_reason == "tool_calls" and s0.request_id == first.id
    assert [(c.id, c.valid) for c in s0.tool_calls] == [(call.call_id, True)]
    assert [(r.tool_call_id, r.ok) for r in s0.tool_results] == [(call.call_id, True)]
    assert s1.prompt_ids[: len(s0.prompt_ids) + len(s0.output_ids)] == s0.prompt_ids + s0.output_ids
    assert not s1.prefix_mismatch


def test_streamed_function_call_events(client):
    events = list(client.responses.create(
        model="base", input=ASK, tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False, temperature=1.0, stream=True,
    ))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    done = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert len(added) == 1 and added[0].item.arguments == "" and len(done) == 1 and deltas == done[0]
    jsonschema.validate(json.loads(done[0]), WEATHER)
    final = events[-1].response
    assert events[-1].type == "response.completed"
    assert [o.arguments for o in final.output if o.type == "function_call"] == done


def test_previous_response_id_continues_the_recorded_conversation(rt, client):
    raw = client.responses.with_raw_response.create(model="base", instructions="Be brief.", input=ASK,
                                                    max_output_tokens=6, temperature=1.0)
    first, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    raw2 = client.responses.with_raw_response.create(model="base", instructions="Be brief.", input="And tomorrow?",
                                                     previous_response_id=first.id, max_output_tokens=6)
    second = raw2.parse()
    assert second.previous_response_id == first.id
    assert raw2.headers["x-tinygpt-trajectory"] == tid and raw2.headers["x-tinygpt-step"] == "1"
    s0, s1 = trajectory(rt, tid).steps
    assert s1.prompt_ids[: len(s0.prompt_ids) + len(s0.output_ids)] == s0.prompt_ids + s0.output_ids
    assert not s1.prefix_mismatch and s1.timings.cached_tokens >= len(s0.prompt_ids)
    # A chain of three: the third turn continues the second.
    raw3 = client.responses.with_raw_response.create(model="base", instructions="Be brief.", input="Thanks.",
                                                     previous_response_id=second.id, max_output_tokens=3)
    assert raw3.headers["x-tinygpt-trajectory"] == tid and raw3.headers["x-tinygpt-step"] == "2"


def test_store_false_and_unknown_previous_ids_are_400(client):
    r = client.responses.create(model="base", input="hi", max_output_tokens=2, store=False)
    assert r.store is False
    for missing in (r.id, "resp_nope"):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="base", input="again", previous_response_id=missing, max_output_tokens=2)
        assert e.value.code == "previous_response_not_found" and e.value.param == "previous_response_id"


def test_json_schema_text_format_validates(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 12}}, "required": ["answer"],
              "additionalProperties": False}
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    r = client.responses.create(model="base", input=ASK, text=fmt, temperature=1.0, max_output_tokens=60)
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema"


def test_logprobs_come_back_on_the_output_text(client):
    r = client.responses.create(model="base", input=ASK, max_output_tokens=5, top_logprobs=2,
                                include=["message.output_text.logprobs"])
    part = r.output[0].content[0]
    # Bytes join back into the text even where a token splits a character (its `token` is U+FFFD).
    assert bytes(b for lp in part.logprobs for b in lp.bytes).decode("utf-8", errors="replace") == part.text
    assert all(len(lp.top_logprobs) == 2 for lp in part.logprobs)


@pytest.mark.parametrize(
    "kwargs, status, needle",
    [
        (dict(model="no-such-model"), 404, "no-such-model"),
        (dict(tools=[{"type": "web_search"}]), 400, "tools[0]"),
        (dict(input=[{"type": "reasoning", "summary": []}]), 400, "input[0]"),
        (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]), 400, "input_image"),
        (dict(input=[{"type": "function_call_output", "output": "x"}]), 400, "call_id"),
        (dict(reasoning={"effort": "high"}), 400, "reasoning"),
        (dict(tool_choice="required"), 400, "tool_choice"),
        (dict(truncation="auto"), 400, "truncation"),
        (dict(max_output_tokens=0), 400, "max_output_tokens"),
        (dict(max_output_tokens=100_000), 400, "context"),
        (dict(text={"format": {"type": "json_schema", "name": "x"}}), 400, "schema"),
        (dict(unknown_field=1), 400, "unknown_field"),
    ],
)
def test_bad_input_is_an_openai_error_object(rt, kwargs, status, needle):
    body = {"model": "base", "input": ASK, "max_output_tokens": 4} | kwargs
    code, raw = post(rt.port, "/v1/responses", body, {"Authorization": f"Bearer {KEY}"})
    error = json.loads(raw)["error"]
    assert code == status and needle in error["message"] and error["type"]


def test_api_key_is_a_bearer_token(rt):
    assert post(rt.port, "/v1/responses", {"model": "base", "input": "x"}, {"x-api-key": KEY})[0] == 401
    status, raw = post(rt.port, "/v1/responses", {"model": "base", "input": "x", "max_output_tokens": 1},
                       {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and json.loads(raw)["object"] == "response"


def test_a_responses_trajectory_is_ingested_like_any_other(tiny_model_dir, tmp_path):
    flushed = []
    with running(tiny_model_dir, tmp_path, on_flushed=flushed.append, max_tokens=200) as rt:
        client = openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)
        first = client.responses.create(model="base", input=ASK, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False)
        call = next(o for o in first.output if o.type == "function_call")
        client.responses.create(model="base", previous_response_id=first.id, tools=TOOLS, max_output_tokens=3,
                                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}])
        rt.recorder.seal_all().result()
    (path,) = flushed
    record, traj = examine(TrajectoryRef(path=str(path), sha256=""))
    assert record.status == "ingested", record.reason
    assert record.steps == 2 and traj.steps[0].tool_results[0].tool_call_id == call.call_id


def test_the_response_store_is_bounded_by_entries_and_text():
    from tinygpt.runtime.serving.protocol import Message
    from tinygpt.runtime.serving.responses import ResponseStore

    store = ResponseStore(max_entries=3, max_chars=100)
    for i in range(5):
        store.put(f"r{i}", (Message(role="user", content="x" * 10),))
    assert len(store) == 3 and store.get("r0") is None and store.get("r4") is not None
    store.put("big", (Message(role="user", content="y" * 95),))
    assert store.get("big") is not None and len(store) == 1


def test_fuzz_malformed_requests_are_4xx_then_a_valid_one_succeeds(rt, client):
    import random

    from tests.test_serving_http import _mutations

    statuses = []
    for body in _mutations({"model": "base", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 2},
                           random.Random(7)):
        status, raw = post(rt.port, "/v1/responses", body, {"Authorization": f"Bearer {KEY}"})
        statuses.append(status)
        if status != 200:
            assert json.loads(raw)["error"]["message"], raw
    assert all(s == 200 or 400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert sum(400 <= s < 500 for s in statuses) > 250
    assert client.responses.create(model="base", input="hi", max_output_tokens=2).object == "response"
