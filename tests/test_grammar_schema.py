"""JSON Schema → regex: what each keyword admits, and what is refused (with its path)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.test_grammar_sampling import (
    assert_valid,
    sample,
    text_of,
    tiny_info,  # noqa: F401 - fixture
    tiny_tokenizer,  # noqa: F401 - fixture
)
from tinygpt.runtime.grammar import GrammarError, build_constraint
from tinygpt.runtime.grammar.json_schema import compile_schema

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city"],
}

CASES = [
    (
        WEATHER,
        [{"city": "Paris"}, {"city": "Paris", "unit": "celsius"}, {"city": "P", "days": 14}, '{"city":"x" , "days": 3}'],
        [{}, {"unit": "celsius"}, {"city": "P", "days": 15}, {"city": "P", "days": 0}, {"city": "P", "unit": "kelvin"}],
    ),
    (
        {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}},
        [{}, {"a": True}, {"b": None}, {"a": False, "b": None}],
        ['{,"b":null}', '{"a":true,}', {"c": 1}],
    ),
    (
        {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}, "minProperties": 1},
        [{"a": True}, {"b": None}, {"a": False, "b": None}],
        [{}],
    ),
    (
        {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
        [[], [1], [0.5, 2.25]],
        [[0], [-1]],
    ),
    (
        {"type": "array", "items": {"enum": ["mon", "tue", "wed"]}, "uniqueItems": True, "minItems": 1},
        [["mon"], ["mon", "wed"], ["mon", "tue", "wed"]],
        [[], ["mon", "mon"]],
    ),
    (
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False, "minItems": 1},
        [["a"], ["a", 1]],
        [[], ["a", 1, 2], [1]],
    ),
    (
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
        [[1, 2], [1, 2, 3]],
        [[1], [1, 2, 3, 4]],
    ),
    (
        {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
        ['"2024-02-28"', "null"],
        ['"2024-02-30"', '"yesterday"'],
    ),
    (
        {
            "oneOf": [
                {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
                {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]},
            ]
        },
        [{"kind": "a"}, {"kind": "b"}, {"kind": "a", "x": 3}],
        [{"kind": "c"}, {}],
    ),
    (
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                    "required": ["name"],
                }
            },
            "$ref": "#/$defs/node",
        },
        [{"name": "a"}, {"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]}],
        [{"children": []}],
    ),
    (
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "integer", "minimum": 0}}, "required": ["b"]},
            ]
        },
        [{"a": "x", "b": 1}],
        [{"a": "x"}, {"a": "x", "b": -1}],
    ),
    (
        {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 2},
        [{}, {"x": 1, "y": 2}],
        [{"x": "a"}, {"a": 1, "b": 2, "c": 3}],
    ),
    ({"type": ["string", "null"], "maxLength": 3}, ['"abc"', "null"], ['"abcd"', "1"]),
    ({"type": "integer", "nullable": True, "maximum": 5}, ["5", "-3"], ["6", "null"]),
    ({"const": {"a": [1, 2]}}, [{"a": [1, 2]}], [{"a": [1]}]),
    ({"type": "string", "enum": ["a", "b", 3]}, ['"a"', '"b"'], ["3"]),  # 3 is not a string
    ({"type": "object", "required": ["x"]}, [{"x": 1}, {"x": {"y": [1]}}], [{}]),
]


@pytest.mark.parametrize("schema, good, bad", CASES)
def test_compiled_regex_admits_valid_and_refuses_invalid(schema, good, bad):
    regex = re.compile(compile_schema(schema, count=False).regex)
    for value in good:
        text = value if isinstance(value, str) else json.dumps(value)
        assert regex.fullmatch(text), text
        assert_valid(json.loads(text), schema)
    for value in bad:
        text = value if isinstance(value, str) else json.dumps(value)
        assert not regex.fullmatch(text), text


@pytest.mark.parametrize(
    "schema, where",
    [
        ({"type": "object", "patternProperties": {"a": {}}}, "params.patternProperties: unsupported schema keyword"),
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "params.properties.a.not:"),
        ({"if": {"type": "string"}, "then": {"minLength": 1}}, "params.if:"),
        ({"type": "object", "properties": {"a": {"type": "string", "frobnicate": 1}}}, "params.properties.a.frobnicate: unsupported schema keyword 'frobnicate' (unknown keyword)"),
        ({"type": "string", "format": "color"}, "params.format: unsupported format 'color'"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "params.oneOf: branches 0 and 1 can match the same value"),
        ({"type": "strin"}, "params.type: invalid schema"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "params.uniqueItems:"),
        ({"type": "number", "multipleOf": 0.5}, "params.multipleOf:"),
        ({"$ref": "https://example.com/schema.json"}, "only local references"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"type": "string", "pattern": "(?=x)"}, "params.pattern: lookaround"),
        ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 10}, "pattern '^[a-z]+$' with minLength/maxLength"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "no integer lies in"),
        (
            {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}}, "$ref": "#/$defs/n"},
            "params.properties.c.properties.c.properties.c: $ref '#/$defs/n' recurses more than 3 levels",
        ),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "disjoint types"),
        ({"allOf": [{"pattern": "a"}, {"pattern": "b"}]}, "params.pattern: allOf parts give 'pattern' different values"),
    ],
)
def test_unenforceable_schemas_raise_with_path(schema, where):
    with pytest.raises(GrammarError) as info:
        compile_schema(schema, "params")
    assert where in str(info.value)


def test_recursive_optional_fields_are_cut_at_the_depth_limit():
    schema = CASES[9][0]
    regex = re.compile(compile_schema(schema).regex)
    deep = {"name": "a"}
    for _ in range(5):
        deep = {"name": "a", "children": [deep]}
    assert not regex.fullmatch(json.dumps(deep))
    assert regex.fullmatch(json.dumps({"name": "a", "children": [{"name": "b", "children": []}]}))


def test_annotations_do_not_change_the_grammar():
    plain = compile_schema(WEATHER).regex
    annotated = json.loads(json.dumps(WEATHER))
    annotated["description"] = "x" * 5000
    annotated["properties"]["city"].update(title="City", examples=["Paris"], default="Paris", **{"x-order": 1})
    assert compile_schema(annotated).regex == plain


@pytest.mark.parametrize(
    "schema, text",
    [
        # Each is a valid output whose prefix is also valid: outlines_core's leftmost-first
        # determinization would reject it without the end anchor.
        ({"enum": [1, 12]}, "12"),
        ({"type": "number", "minimum": 0, "maximum": 1}, "0.5"),
        ({"anyOf": [{"type": "integer"}, {"type": "number"}]}, "1.25"),
    ],
)
def test_outputs_with_valid_prefixes_are_reachable(tiny_info, tiny_tokenizer, schema, text):
    constraint = build_constraint(tiny_info, response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    for token in tiny_tokenizer.encode(text, add_special_tokens=False):
        constraint.advance(token)
    assert constraint.eos_allowed


def test_sampled_outputs_validate_for_tricky_schemas(tiny_info):
    for schema, _, _ in CASES:
        response_format = {"type": "json_schema", "json_schema": {"schema": schema}}
        for seed in range(8):
            constraint = build_constraint(tiny_info, response_format=response_format)
            assert_valid(json.loads(text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=60))), schema)
