"""Deferred tools on the tiny model: a one-line tool index in the prompt, the chosen tool's
schema fed after its name (runtime/grammar/deferred.py), one ordinary call for the client.

A random model writes garbage unless constrained, so every call it returns must still
parse and validate against its schema; the trajectory must show what was fed in each
phase, and a next turn must continue the token stream (and the prefix cache) exactly.
"""

from __future__ import annotations

import json
import urllib.request

import jsonschema
import msgspec
import openai
import pytest

from tests.serving_support import post, running
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Step, Trajectory
from tinygpt.runtime.grammar.deferred import fed_indices, first_sentence, index_line, schema_insertion

pytest.importorskip("llguidance")

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIMER = {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 90}}, "required": ["minutes"]}
NOTE = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 16}}, "required": ["text"]}
MAIL = {"type": "object", "properties": {"to": {"type": "string", "maxLength": 12}, "urgent": {"type": "boolean"}}, "required": ["to"]}
SEARCH = {"type": "object", "properties": {"query": {"type": "string", "maxLength": 12}, "limit": {"type": "integer", "minimum": 1, "maximum": 5}},
          "required": ["query"]}


def _tool(name, description, parameters):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    _tool("get_weather", "Weather for a city. Uses the national forecast service; the unit must be given.", WEATHER),
    _tool("set_timer", "Start a kitchen timer.", TIMER),
    _tool("add_note", "Write a note to the notebook.", NOTE),
    _tool("send_mail", "Send a short e-mail. Addresses are checked first.", MAIL),
    _tool("search_web", "Search the web and list the top results.", SEARCH),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
DEFERRED = {"X-TinyGPT-Tool-Mode": "deferred"}


@pytest.fixture(scope="module")
def rt(tiny_model_dir, tmp_path_factory):
    with running(tiny_model_dir, tmp_path_factory.mktemp("deferred"), max_tokens=120, session_idle_s=3600) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(rt):
    return openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)


def _trajectory(rt, tid: str) -> Trajectory:
    """The trajectory as written so far (open: the session may go on)."""
    rt.recorder.flush().result()
    return read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory)


# ------------------------------------------------------------------ pure parts


def test_index_line_and_insertion_text():
    assert first_sentence("Weather for a city. Uses the forecast.") == "Weather for a city."
    assert first_sentence("  spread\n over lines") == "spread"
    assert first_sentence("x" * 400).endswith("...") and len(first_sentence("x" * 400)) == 160
    assert index_line(TOOLS[0]) == "get_weather: Weather for a city."
    assert index_line({"type": "function", "function": {"name": "bare"}}) == "bare"
    # The description follows only where it says more than the index line.
    assert schema_insertion(TOOLS[1]) == ', "parameters": ' + json.dumps(TIMER)
    assert schema_insertion(TOOLS[0]).startswith(', "description": "Weather for a city. Uses the national')


def test_fed_indices_cover_the_insertion_and_nothing_else():
    insert = schema_insertion(TOOLS[1])
    text = '<tool_call>\n{"name": "set_timer"' + insert + ', "arguments": {"minutes": 5}}\n</tool_call>'
    # One id per character: exactly the insertion's characters are fed.
    ends = list(range(1, len(text) + 1))
    start = text.index(insert)
    assert fed_indices(text, ends, {"set_timer": insert}) == list(range(start, start + len(insert)))
    # An id straddling the edge counts as fed.
    assert fed_indices(text, [start + 1, len(text)], {"set_timer": insert}) == [0, 1]
    assert fed_indices(text, ends, {}) == []


# ------------------------------------------------------------------ through the server


def test_index_prompt_is_shorter_and_lists_one_line_per_tool(rt, client):
    full = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, seed=1)
    deferred = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60,
                                              seed=1, extra_headers=DEFERRED)
    assert deferred.usage.prompt_tokens < 0.6 * full.usage.prompt_tokens, (deferred.usage, full.usage)
    text = rt.completions.prompts.render(rt_messages(ASK), rt_tools(TOOLS), "deferred")
    assert "\nget_weather: Weather for a city.\nset_timer: Start a kitchen timer.\n" in text
    assert '"properties"' not in text


def rt_messages(messages):
    from tinygpt.runtime.serving.protocol import Message

    return [msgspec.convert(m, Message) for m in messages]


def rt_tools(tools):
    from tinygpt.runtime.serving.protocol import Tool

    return [msgspec.convert(t, Tool) for t in tools]


@pytest.mark.parametrize("seed", range(5))
def test_every_required_call_validates(client, seed):
    r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                       temperature=1.0, seed=seed, extra_headers=DEFERRED)
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    assert "parameters" not in call.function.arguments


def test_named_and_auto_calls_validate(client):
    r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, temperature=1.0, seed=4, parallel_tool_calls=False,
                                       tool_choice={"type": "function", "function": {"name": "search_web"}},
                                       metadata={"tool_mode": "deferred"})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "search_web"
    jsonschema.validate(json.loads(call.function.arguments), SEARCH)
    for seed in range(4):
        r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="auto", temperature=1.0, seed=seed,
                                           max_tokens=40, extra_headers=DEFERRED)
        for call in r.choices[0].message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_trajectory_records_both_phases(rt, client):
    raw = client.chat.completions.with_raw_response.create(
        model="base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=2, extra_headers=DEFERRED)
    r = raw.parse()
    (call,) = r.choices[0].message.tool_calls
    tid, index = raw.headers["X-TinyGPT-Trajectory"], int(raw.headers["X-TinyGPT-Step"])
    step = _trajectory(rt, tid).steps[index]
    assert step.tool_mode == "deferred"
    decode = rt.completions.prompts.decode
    # Phase 1's input: the index prompt, no schema.
    prompt = decode(step.prompt_ids)
    assert "get_weather: Weather for a city." in prompt and '"properties"' not in prompt
    # Phase 2's input: the chosen tool's schema, fed (forced: loss mask 0), never sampled.
    assert step.inserted and set(step.inserted) <= set(step.forced)
    assert step.inserted == list(range(step.inserted[0], step.inserted[-1] + 1))
    fed = decode([step.output_ids[i] for i in step.inserted])
    assert schema_insertion(next(t for t in TOOLS if t["function"]["name"] == call.function.name)) in fed
    # The sampled ids: the name before the schema, the arguments after it.
    before = decode(step.output_ids[: step.inserted[0]])
    after = decode(step.output_ids[step.inserted[-1] + 1 :])
    assert before.startswith("<tool_call>") and call.function.name in before
    assert call.function.arguments in after
    assert step.text == decode(step.output_ids[:-1] if step.output_ids[-1] in rt.engine.tokenizer.eos_token_ids else step.output_ids)


def test_parallel_calls_each_get_their_schema(rt, client):
    eos = sorted(rt.engine.tokenizer.eos_token_ids)[0]
    seen = 0
    for seed in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=True, seed=seed,
            temperature=1.0, max_tokens=150, logit_bias={str(eos): -100}, extra_headers=DEFERRED)
        r = raw.parse()
        calls = r.choices[0].message.tool_calls or []
        for call in calls:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        step = _trajectory(rt, raw.headers["X-TinyGPT-Trajectory"]).steps[int(raw.headers["X-TinyGPT-Step"])]
        fed = rt.completions.prompts.decode([step.output_ids[i] for i in step.inserted])
        for call in calls:
            assert schema_insertion(next(t for t in TOOLS if t["function"]["name"] == call.function.name)) in fed
        seen = max(seen, len(calls))
    assert seen >= 2


def test_streamed_call_matches_the_unstreamed_one(client):
    kw = dict(model="base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=7, temperature=1.0,
              extra_headers=DEFERRED)
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    name, args, finish = None, "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        choice = chunk.choices[0]
        for d in choice.delta.tool_calls or []:
            assert d.index == 0
            if d.function.name:
                name = d.function.name
            args += d.function.arguments or ""
        finish = choice.finish_reason or finish
    assert (name, args, finish) == (whole.function.name, whole.function.arguments, "tool_calls")


def test_bad_mode_is_a_400_naming_it(rt, client):
    with pytest.raises(openai.BadRequestError, match="X-TinyGPT-Tool-Mode: unknown tool mode 'lazy'"):
        client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, extra_headers={"X-TinyGPT-Tool-Mode": "lazy"})
    status, body = post(rt.port, "/v1/chat/completions",
                        {"model": "base", "messages": ASK, "tools": TOOLS, "metadata": {"tool_mode": "tiny"}})
    assert status == 400 and "metadata.tool_mode: unknown tool mode 'tiny'" in body.decode()
    assert json.loads(body)["error"]["param"] == "tool_mode"


def test_next_turn_continues_the_stream_and_reuses_the_cache(rt, client):
    """Turn 2 renders turn 1's call with the schema that was fed, so its prompt is turn 1's
    ids plus the new text (no prefix mismatch) and the prefix cache serves them."""
    for mode in ("deferred", "full"):
        headers = {"X-TinyGPT-Tool-Mode": mode, "X-TinyGPT-Session": f"two-turns-{mode}"}
        first = client.chat.completions.with_raw_response.create(
            model="base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=5, extra_headers=headers)
        call = first.parse().choices[0].message.tool_calls[0]
        convo = ASK + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"ok": true}'},
        ]
        second = client.chat.completions.with_raw_response.create(
            model="base", messages=convo, tools=TOOLS, max_tokens=8, seed=5, extra_headers=headers)
        tid = second.headers["X-TinyGPT-Trajectory"]
        assert tid == first.headers["X-TinyGPT-Trajectory"]
        s1, s2 = _trajectory(rt, tid).steps
        assert not s2.prefix_mismatch and s2.tool_mode == mode
        head = s1.prompt_ids + s1.output_ids
        assert s2.prompt_ids[: len(head)] == head
        usage = second.parse().usage
        assert usage.prompt_tokens_details.cached_tokens >= len(s1.prompt_ids), (mode, usage)


def test_metrics_count_requests_per_mode(rt, client):
    client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, seed=1)
    client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, seed=1,
                                   extra_headers=DEFERRED)
    with urllib.request.urlopen(rt.url + "/metrics") as resp:
        body = resp.read().decode()
    assert 'tinygpt_tool_requests_total{mode="deferred"}' in body
    assert 'tinygpt_tool_requests_total{mode="full"}' in body
    assert "tinygpt_deferred_schema_tokens_total" in body


def test_server_default_mode(tiny_model_dir, tmp_path):
    with running(tiny_model_dir, tmp_path, max_tokens=60, tool_mode="deferred") as rt:
        c = openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)
        deferred = c.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", seed=1)
        full = c.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", seed=1,
                                         metadata={"tool_mode": "full"})
        assert deferred.usage.prompt_tokens < full.usage.prompt_tokens


def test_old_steps_decode_as_full():
    old = {"index": 0, "prompt_ids": [1], "output_ids": [2], "forced": []}
    step = msgspec.json.decode(json.dumps(old), type=Step)
    assert step.tool_mode == "full" and step.inserted == []


def test_pin_tool_mode_is_validated_with_its_path(tmp_path):
    import subprocess
    import sys

    from tinygpt.runtime.contracts import ContractError
    from tinygpt.runtime.project import load_project

    good = {"name": "p", "specialists": [{"name": "weather", "tool_mode": "deferred"}]}
    (tmp_path / "tinygpt.project.json").write_text(json.dumps(good))
    assert load_project(tmp_path / "tinygpt.project.json").specialists[0].tool_mode == "deferred"
    bad = {"name": "p", "specialists": [{"name": "weather"}, {"name": "mail", "tool_mode": "lazy"}]}
    (tmp_path / "tinygpt.project.json").write_text(json.dumps(bad))
    with pytest.raises(ContractError, match=r"specialists\[1\]\.tool_mode"):
        load_project(tmp_path / "tinygpt.project.json")
    out = subprocess.run([sys.executable, "-m", "tinygpt.runtime.cli", "validate", str(tmp_path / "tinygpt.project.json")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "specialists[1].tool_mode" in out.stdout + out.stderr


def test_the_grammar_feeds_the_chosen_schema_after_the_name(tiny_model_dir):
    """Phase 1 samples a name among the index's; phase 2's schema is the grammar's only
    continuation (forced), and the arguments after it are constrained to that schema."""
    from tokenizers import Tokenizer

    from tinygpt.runtime.grammar import TokenizerInfo, build_constraint

    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))

    info = TokenizerInfo.from_tokenizer(_hf(tiny_model_dir), vocab_size=512)
    c = build_constraint(info, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, deferred=True)
    head = '<tool_call>\n{"name": "set_timer"'
    for token in tok.encode(head, add_special_tokens=False).ids:
        c.advance(token)
    fed = tok.decode(c.forced(), skip_special_tokens=False)
    assert fed.startswith(schema_insertion(TOOLS[1]) + ', "arguments": {"'), fed
    full = build_constraint(info, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    for token in tok.encode(head, add_special_tokens=False).ids:
        full.advance(token)
    assert tok.decode(full.forced(), skip_special_tokens=False).startswith(', "arguments": {"')


def _hf(model_dir):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(model_dir)
