"""The tool-call path of the server, driven by a scripted constraint (independent of the grammar).

The stand-in `tinygpt.runtime.grammar` forces the model to "sample" a given text, so
these tests check what serving does with tool calls: OpenAI response and stream shapes,
finish_reason, ids, 400s for grammar errors, and that a tool-call turn re-renders to
exactly the sampled ids on the next request.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import openai
import pytest

from tests.serving_support import running
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@dataclass
class ParsedCall:
    name: str
    arguments_json: str


class GrammarError(ValueError):
    pass


class Scripted:
    """A logits processor that makes greedy decoding produce `ids`, then end-of-turn."""

    kind = "tools"

    def __init__(self, ids: list[int], eos: int):
        self.ids, self.eos, self.start, self.done = ids, eos, None, False

    def __call__(self, tokens, logits):
        import mlx.core as mx

        if self.start is None:
            self.start = tokens.size
        i = tokens.size - self.start
        target = self.ids[i] if i < len(self.ids) else self.eos
        self.done = i >= len(self.ids)
        bonus = mx.zeros(logits.shape[-1]).at[target].add(1e4)
        return logits + bonus


def fake_grammar(tokenizer, script: dict) -> types.ModuleType:
    mod = types.ModuleType("tinygpt.runtime.grammar")

    class TokenizerInfo:
        @staticmethod
        def from_tokenizer(tok, vocab_size):
            return (tok, vocab_size)

    def build_constraint(info, *, tools, tool_choice, parallel_tool_calls, response_format, deferred=False, on_compile=None):
        names = [t["function"]["name"] for t in tools or []]
        if "bad_tool" in names:
            raise GrammarError("tool 'bad_tool': schema keyword 'patternProperties' is not supported")
        if tool_choice == "auto":
            return None
        text = script["text"]
        eos = sorted(tokenizer.eos_token_ids)[0]
        return Scripted(tokenizer.encode(text, add_special_tokens=False), eos)

    def parse_tool_calls(text):
        body = text.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
        try:
            obj = json.loads(body)
        except ValueError:
            return []
        # Verbatim arguments, as the template renders them back.
        args = body[body.index('"arguments": ') + len('"arguments": ') : -1]
        return [ParsedCall(obj["name"], args)]

    mod.GrammarError, mod.TokenizerInfo = GrammarError, TokenizerInfo
    mod.build_constraint, mod.parse_tool_calls = build_constraint, parse_tool_calls
    return mod


@pytest.fixture(scope="module")
def script():
    return {"text": CALL}


@pytest.fixture(scope="module")
def rt(tiny_model_dir, tmp_path_factory, script):
    with running(tiny_model_dir, tmp_path_factory.mktemp("tools"), max_tokens=64) as rt:
        saved = sys.modules.get("tinygpt.runtime.grammar")
        sys.modules["tinygpt.runtime.grammar"] = fake_grammar(rt.engine.tokenizer, script)
        try:
            yield rt
        finally:
            if saved is not None:
                sys.modules["tinygpt.runtime.grammar"] = saved
            else:
                del sys.modules["tinygpt.runtime.grammar"]


@pytest.fixture(scope="module")
def client(rt):
    return openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)


ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_required_tool_call_comes_back_as_openai_tool_calls(client, script):
    script["text"] = CALL
    r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call_deltas_accumulate_to_the_call(client, script):
    script["text"] = "Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Rome")
    chunks = list(
        client.chat.completions.create(
            model="base", messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True, max_tokens=300,
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert content == "Let me check."
    # OpenAI's shape: per call a first delta with id, type and name, then argument
    # fragments as they are decoded (several, not one per call).
    assert sorted({d.index for d in deltas}) == [0, 1]
    for index, city in enumerate(["Paris", "Rome"]):
        mine = [d for d in deltas if d.index == index]
        assert mine[0].id.startswith("call_") and mine[0].type == "function" and mine[0].function.name == "get_weather"
        assert all(d.id is None and d.function.name is None for d in mine[1:])
        assert len(mine) > 2
        assert json.loads("".join(d.function.arguments for d in mine))["city"] == city
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_grammar_errors_are_400_never_unconstrained_output(client):
    bad = [{"type": "function", "function": {"name": "bad_tool", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="base", messages=ASK, tools=bad, tool_choice="required")
    assert "patternProperties" in e.value.body["message"]


def test_a_tool_call_turn_is_reused_token_for_token_by_the_next_request(rt, client, script):
    script["text"] = CALL
    raw = client.chat.completions.with_raw_response.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required")
    first, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    call = first.choices[0].message.tool_calls[0]
    follow = ASK + [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": '{"ok": true, "temp": 21}'}]
    raw2 = client.chat.completions.with_raw_response.create(model="base", messages=follow, tools=TOOLS, tool_choice="none", max_tokens=4)
    assert raw2.headers["x-tinygpt-trajectory"] == tid and raw2.headers["x-tinygpt-step"] == "1"
    rt.recorder.flush().result()
    traj = read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory)
    s0, s1 = traj.steps
    assert s0.text == CALL and s0.finish_reason == "tool_calls" and s0.constraint == "tools"
    assert [(c.id, c.name, c.valid) for c in s0.tool_calls] == [(call.id, "get_weather", True)]
    assert [(r.tool_call_id, r.ok) for r in s0.tool_results] == [(call.id, True)]
    assert s1.prompt_ids[: len(s0.prompt_ids) + len(s0.output_ids)] == s0.prompt_ids + s0.output_ids
    assert not s1.prefix_mismatch
    assert traj.tools[0]["function"]["name"] == "get_weather"


def test_a_repeated_call_ends_the_turn_without_it(rt, client, script):
    """Small models repeat the same call until max_tokens: the exact repeat ends the turn,
    is not returned, and its tokens are not recorded (the turn re-renders as returned)."""
    script["text"] = CALL + "\n" + CALL.replace("Paris", "Rome") + "\n" + CALL + "\n" + CALL
    raw = client.chat.completions.with_raw_response.create(
        model="base", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=300
    )
    r, tid = raw.parse(), raw.headers["x-tinygpt-trajectory"]
    assert r.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments)["city"] for c in r.choices[0].message.tool_calls] == ["Paris", "Rome"]
    rt.recorder.flush().result()
    (step,) = read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory).steps
    assert rt.engine.tokenizer.decode(step.output_ids) == CALL + "\n" + CALL.replace("Paris", "Rome")


def test_a_repeated_call_is_never_streamed(client, script):
    script["text"] = CALL + "\n" + CALL
    chunks = list(client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required",
                                                 stream=True, max_tokens=300))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert {d.index for d in deltas} == {0}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stop", ["<", "<tool", "\n", "}"])
def test_stop_strings_never_cut_a_tool_call(client, script, stop):
    script["text"] = CALL
    r = client.chat.completions.create(model="base", messages=ASK, tools=TOOLS, tool_choice="required", stop=stop)
    (call,) = r.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_under_auto_a_stop_string_at_the_call_marker_gives_way_to_the_call():
    from tinygpt.runtime.grammar import parse_tool_calls
    from tinygpt.runtime.serving.assembler import Assembler

    a = Assembler(tools=True, stop=["<"], parse=parse_tool_calls, parts=True)
    for ch in "Sure.\n" + CALL:
        a.feed(ch)
    a.finish()
    assert a.text() == "Sure." and [c.name for c in a.calls] == ["get_weather"]
    # Elsewhere the stop string still ends free text.
    b = Assembler(tools=True, stop=["<"], parse=parse_tool_calls, parts=True)
    for ch in "a <b> c":
        b.feed(ch)
    assert b.stopped and "".join(b.content) == "a "
