"""JSON Schema through llguidance: what each keyword admits, and what is refused (with its path)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_grammar_sampling import (
    assert_valid,
    sample,
    text_of,
    tiny_info,  # noqa: F401 - fixture
    tiny_tokenizer,  # noqa: F401 - fixture
)
from tinygpt.runtime.grammar import GrammarError, build_constraint, grammar_spec
from tinygpt.runtime.grammar.schemas import json_schema

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
        [{"city": "Paris"}, {"city": "Paris", "unit": "celsius"}, {"city": "P", "days": 14}],
        [{}, {"unit": "celsius"}, {"city": "P", "days": 15}, {"city": "P", "days": 0}, {"city": "P", "unit": "kelvin"}],
    ),
    (
        {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}},
        [{}, {"a": True}, {"b": None}, {"a": False, "b": None}],
        ['{,"b":null}', '{"a":true,}', {"c": 1}],
    ),
    (
        {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
        [[], [1], [0.5, 2.25]],
        [[0], [-1]],
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
    ({"type": ["string", "null"], "maxLength": 3}, ['"abc"', "null"], ['"abcd"', "1"]),
    ({"type": "integer", "nullable": True, "maximum": 5}, ["5", "-3"], ["6", "null"]),
    ({"const": {"a": [1, 2]}}, [{"a": [1, 2]}], [{"a": [1]}]),
    ({"type": "string", "enum": ["a", "b", 3]}, ['"a"', '"b"'], ["3"]),  # 3 is not a string
    ({"type": "object", "required": ["x"]}, [{"x": 1}, {"x": {"y": [1]}}], [{}]),
]


def admits(info, tokenizer, schema, text: str) -> bool:
    """Whether the grammar for `schema` takes `text` (in the template's JSON layout) whole."""
    constraint = build_constraint(info, response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    try:
        for token in tokenizer.encode(text, add_special_tokens=False):
            constraint.advance(token)
    except ValueError:
        return False
    return constraint.eos_allowed


@pytest.mark.parametrize("schema, good, bad", CASES)
def test_grammar_admits_valid_and_refuses_invalid(tiny_info, tiny_tokenizer, schema, good, bad):
    for value in good:
        text = value if isinstance(value, str) else json.dumps(value)
        assert admits(tiny_info, tiny_tokenizer, schema, text), text
        assert_valid(json.loads(text), schema)
    for value in bad:
        text = value if isinstance(value, str) else json.dumps(value)
        assert not admits(tiny_info, tiny_tokenizer, schema, text), text


@pytest.mark.parametrize(
    "schema, where",
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "params.properties.a.not: unsupported schema keyword 'not'"),
        ({"if": {"type": "string"}, "then": {"minLength": 1}}, "params.if: unsupported schema keyword 'if'"),
        ({"type": "string", "format": "color"}, "params: cannot be enforced: Unknown format: color"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "params.oneOf: unsupported schema keyword 'oneOf' (branches that may overlap)"),
        ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "string", "minLength": 3}]}}}, "params.properties.a.oneOf:"),
        ({"type": "strin"}, "params: cannot be enforced: Invalid type: strin"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "params.uniqueItems: unsupported schema keyword 'uniqueItems'"),
        ({"$ref": "https://example.com/schema.json"}, "does not fetch resources"),
        ({"$ref": "#/$defs/missing"}, "'/$defs/missing' does not exist"),
        ({"type": "string", "pattern": "(?=x)"}, "params: cannot be enforced: regex parse error"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable schema: minimum (5) is greater than maximum (1)"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "incompatible types"),
        ({"type": "object", "properties": {"a": {"type": "boolean"}}, "additionalProperties": {"type": "integer"}, "minProperties": 1}, "min/maxProperties"),
    ],
)
def test_unenforceable_schemas_raise_with_path(tiny_info, schema, where):
    with pytest.raises(GrammarError) as info:
        json_schema(schema, "params")
    assert where in str(info.value)
    with pytest.raises(GrammarError, match="response_format.json_schema.schema"):
        build_constraint(tiny_info, response_format={"type": "json_schema", "json_schema": {"schema": schema}})


@pytest.mark.parametrize(
    "schema, good, bad",
    [
        # Disjoint branches (by type, or by a required discriminator) are enforced as anyOf.
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, ['"a"', "3"], ["true", "1.5"]),
        ({"type": "number", "multipleOf": 0.5}, ["1.5", "2"], ["1.25"]),
        ({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}, "minProperties": 1}, ['{"a": true}', '{"b": null}'], ["{}"]),
        ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, ['"abc"'], ['"abcd"', '"A"']),
        ({"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False}, ['{"x-a": 1}'], ['{"x-a": "s"}', '{"y": 1}']),
    ],
)
def test_keywords_the_old_compiler_refused_are_enforced(tiny_info, tiny_tokenizer, schema, good, bad):
    for text in good:
        assert admits(tiny_info, tiny_tokenizer, schema, text), text
        assert_valid(json.loads(text), schema)
    for text in bad:
        assert not admits(tiny_info, tiny_tokenizer, schema, text), text


def test_unique_items_over_a_small_enum_is_enforced(tiny_info, tiny_tokenizer):
    """A set from an enum (tags, toppings): distinct values, in the enum's order."""
    schema = {"type": "array", "items": {"type": "string", "enum": ["gps", "seat", "chains"]}, "uniqueItems": True,
              "minItems": 1}
    for text in ['["gps"]', '["gps", "chains"]', '["gps", "seat", "chains"]']:
        assert admits(tiny_info, tiny_tokenizer, schema, text), text
        assert_valid(json.loads(text), schema)
    for text in ['["gps", "gps"]', "[]", '["chains", "gps"]', '["wifi"]']:
        assert not admits(tiny_info, tiny_tokenizer, schema, text), text
    # False and single-item arrays say nothing to enforce.
    assert admits(tiny_info, tiny_tokenizer, {"type": "array", "items": {"type": "integer"}, "uniqueItems": False}, "[1, 1]")
    assert admits(tiny_info, tiny_tokenizer, {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 1}, "[7]")
    # A larger enum (2**9 arrays) or free-form items stay a 400 that says what is enforced.
    with pytest.raises(GrammarError, match=r"params.uniqueItems: .*enum of at most 8"):
        json_schema({"type": "array", "items": {"enum": list(range(9))}, "uniqueItems": True}, "params")
    # A malformed item "type" next to uniqueItems is a GrammarError (a 400), never a crash.
    for kind in ({"x": 1}, [{"x": 1}], ["string", []]):
        with pytest.raises(GrammarError):
            json_schema({"type": "array", "items": {"enum": ["a", "b"], "type": kind}, "uniqueItems": True}, "params")


def test_hostile_pattern_compiles_in_bounded_time(tiny_info, tiny_tokenizer):
    """`^(a|b)*a(a|b){17}$` blew up the DFA compiler (4.5 s, 16 s at k=18); llguidance's
    lexer is lazy and bounded by the parser limits: it compiles and is enforced."""
    for k in (17, 18, 24):
        schema = {"type": "string", "pattern": f"^(a|b)*a(a|b){{{k}}}$"}
        good = '"' + "b" * 3 + "a" + "b" * k + '"'
        assert admits(tiny_info, tiny_tokenizer, schema, good)
        assert not admits(tiny_info, tiny_tokenizer, schema, '"' + "b" * (k + 4) + '"')


def test_recursive_schemas_nest_to_any_depth(tiny_info, tiny_tokenizer):
    (schema,) = [case[0] for case in CASES if "$defs" in case[0]]
    deep = {"name": "a"}
    for _ in range(6):
        deep = {"name": "a", "children": [deep]}
    assert admits(tiny_info, tiny_tokenizer, schema, json.dumps(deep))
    assert not admits(tiny_info, tiny_tokenizer, schema, json.dumps({"name": "a", "children": [{}]}))


def test_annotations_do_not_change_the_grammar():
    plain = grammar_spec(response_format={"type": "json_schema", "json_schema": {"schema": WEATHER}})
    annotated = json.loads(json.dumps(WEATHER))
    annotated["description"] = "x" * 5000
    annotated["properties"]["city"].update(title="City", examples=["Paris"], **{"$comment": "c"})
    again = grammar_spec(response_format={"type": "json_schema", "json_schema": {"schema": annotated}})
    assert again.lark == plain.lark
    # A property that is *named* "description" is not an annotation.
    named = {"type": "object", "properties": {"description": {"type": "string"}}, "required": ["description"]}
    assert '"description"' in grammar_spec(response_format={"type": "json_schema", "json_schema": {"schema": named}}).lark


@pytest.mark.parametrize(
    "schema, text",
    [
        # Each is a valid output whose prefix is also valid.
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
