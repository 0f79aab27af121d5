"""Decode-time counters: string lengths and array sizes enforced outside the regex."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_grammar_sampling import (
    assert_valid,
    assert_valid_calls,
    sample,
    text_of,
    tiny_info,  # noqa: F401 - fixture
    tiny_tokenizer,  # noqa: F401 - fixture
)
from tinygpt.runtime.grammar import build_constraint, grammar_spec
from tinygpt.runtime.grammar.counters import JsonTracker
from tinygpt.runtime.grammar.fragments import ITEM
from tinygpt.runtime.grammar.json_schema import compile_schema
from tinygpt.runtime.grammar.strings import COUNTED_STRING

LONG = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 40, "maxLength": 300},
        "code": {"type": "string", "minLength": 2, "maxLength": 2},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 3, "maxItems": 40},
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2},
    },
    "required": ["title", "code", "tags"],
}


def _json_schema(schema):
    return {"type": "json_schema", "json_schema": {"schema": schema}}


def test_bounded_strings_and_arrays_compile_to_counters():
    fragment = compile_schema(LONG)
    assert fragment.counts == {
        ("string", ("title",)): (40, 300),
        ("string", ("code",)): (2, 2),
        ("string", ("tags", ITEM)): (0, 3),
        ("array", ("tags",)): (3, 40),
        ("array", ("scores",)): (0, 2),
    }
    assert COUNTED_STRING in fragment.regex
    assert "{0,300}" not in fragment.regex and "{2,39}" not in fragment.regex


def test_sampled_values_respect_counted_bounds(tiny_info):
    lengths = set()
    for seed in range(30):
        constraint = build_constraint(tiny_info, response_format=_json_schema(LONG))
        value = json.loads(text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=150)))
        assert_valid(value, LONG)
        lengths.add(len(value["title"]))
    assert max(lengths) > 64, "long strings must be reachable, not narrowed to a small cap"


@pytest.mark.parametrize("most", [0, 1, 2, 5])
def test_tokens_that_open_and_fill_a_string_count(tiny_info, most):
    """Multi-character tokens such as '"Par' open a string and add to it at once."""
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": most}}, "required": ["s"]}
    for seed in range(25):
        constraint = build_constraint(tiny_info, response_format=_json_schema(schema))
        value = json.loads(text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=40)))
        assert len(value["s"]) <= most


def test_free_object_member_counts(tiny_info):
    schema = {
        "type": "object",
        "properties": {"env": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2, "maxProperties": 3}},
        "required": ["env"],
    }
    assert compile_schema(schema).counts == {("object", ("env",)): (2, 3)}
    for seed in range(20):
        constraint = build_constraint(tiny_info, response_format=_json_schema(schema))
        assert_valid(json.loads(text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=60))), schema)


def test_ambiguous_paths_fall_back_to_the_regex():
    schema = {
        "type": "object",
        "properties": {"v": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "string", "minLength": 5, "maxLength": 6}]}},
        "required": ["v"],
    }
    assert compile_schema(schema).counts == {}
    open_below = {"anyOf": [{"type": "object", "properties": {"x": {"type": "string", "maxLength": 2}}}, {}]}
    assert compile_schema(open_below).counts == {}


def test_sampled_values_in_ambiguous_paths_validate(tiny_info):
    schema = {
        "type": "object",
        "properties": {"v": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "string", "minLength": 5, "maxLength": 6}]}},
        "required": ["v"],
    }
    for seed in range(20):
        constraint = build_constraint(tiny_info, response_format=_json_schema(schema))
        assert_valid(json.loads(text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=40))), schema)


def test_tool_counters_are_keyed_by_function(tiny_info):
    tools = [
        {"type": "function", "function": {"name": "short", "parameters": {"type": "object", "properties": {"q": {"type": "string", "maxLength": 2}}, "required": ["q"]}}},
        {"type": "function", "function": {"name": "long", "parameters": {"type": "object", "properties": {"q": {"type": "string", "minLength": 30}}, "required": ["q"]}}},
    ]
    spec = grammar_spec(tools, "required")
    assert spec.counts == {("string", ("short", "q")): (0, 2), ("string", ("long", "q")): (30, None)}
    seen = set()
    for seed in range(30):
        constraint = build_constraint(tiny_info, tools=tools, tool_choice="required")
        text = text_of(tiny_info, sample(constraint, np.random.default_rng(seed), eos_bias=-0.5))
        seen |= {call.name for call in assert_valid_calls(text, tools)}
    assert seen == {"short", "long"}


def test_tracker_follows_paths_through_escapes_and_nesting():
    tracker = JsonTracker({}, tools=False)
    tracker.feed(b'{"a\\"b": "x\\"y", "list": [1, {"k": "')
    assert tracker.string_path() == ("list", ITEM, "k")
    tracker.feed(b'abc"}, "')
    assert tracker.string_path() == ("list", ITEM)  # the next array item
    tracker.feed(b'x"], "')
    assert tracker.string_path() is None  # a key, not a value
    tools = JsonTracker({}, tools=True)
    tools.feed(b'Some text {"not": "json"}\n<tool_call>\n{"name": "f", "arguments": {"q": "hi')
    assert tools.string_path() == ("f", "q") and tools.length == 2
    tools.feed(b'"}}\n</tool_call>')
    assert tools.outside


def test_array_counts_stop_commas_not_items(tiny_info, tiny_tokenizer):
    """At maxItems the comma itself is refused, so the grammar never strands the model."""
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 2}
    constraint = build_constraint(tiny_info, response_format=_json_schema(schema))
    for token in tiny_tokenizer.encode("[1, 2", add_special_tokens=False):
        constraint.advance(token)
    allowed = {tiny_info.token_bytes[i] for i in np.flatnonzero(constraint.allowed())}
    assert not any(piece and b"," in piece for piece in allowed)
    assert any(piece and piece.startswith(b"]") for piece in allowed)
    with pytest.raises(ValueError, match="bound"):
        constraint.advance(tiny_tokenizer.convert_tokens_to_ids(","))


@pytest.mark.parametrize("request_kind", ["json_schema", "required", "auto"])
def test_grouped_checks_agree_with_token_by_token_checks(tiny_info, tiny_tokenizer, request_kind):
    """restrict() decides per group of tokens; fits() simulates one token exactly."""
    poll = {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 3, "maxLength": 12},
            "options": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 2, "maxItems": 3},
            "meta": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 2},
        },
        "required": ["question", "options"],
    }
    if request_kind == "json_schema":
        request = dict(response_format=_json_schema(poll))
    else:
        request = dict(tools=[{"type": "function", "function": {"name": "poll", "parameters": poll}}], tool_choice=request_kind)
    vocab = tiny_info.vocab_size
    for seed in range(25):
        rng = np.random.default_rng(seed)
        constraint = build_constraint(tiny_info, **request)
        if request_kind == "auto":  # into a call, past the free text
            for token in tiny_tokenizer.encode("Let me see.\n<tool_call>\n", add_special_tokens=False):
                constraint.advance(token)
        for _ in range(150):
            allowed = constraint.allowed()
            grammar_only = constraint._unpack(constraint._state()[0], vocab)
            for token in np.flatnonzero(grammar_only):
                if token not in tiny_info.eos_token_ids:
                    separator = constraint._separator
                    expected = constraint._counts.fits(int(token)) and (separator is None or separator.fits(int(token)))
                    assert allowed[token] == expected, (seed, token, tiny_info.token_bytes[token])
            choices = np.flatnonzero(allowed)
            token = int(rng.choice(choices))
            if token in tiny_info.eos_token_ids:
                break
            constraint.advance(token)
