"""Checking a tool call's arguments against its tool's JSON schema: one check for everyone.

The recorder marks each recorded call valid or not, the label stage scores trajectories
by it, distillation filters teacher answers with it. Validators are compiled once per
distinct schema (checking a schema costs more than using it).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema

from .contracts.trajectory import ToolCall


class InvalidToolSchema(ValueError):
    """A tool whose parameter schema is not a valid JSON schema."""


def tools_by_name(tools: list[Any]) -> dict[str, dict]:
    """name -> function spec, from OpenAI `tools` (`{"type": "function", "function": {...}}`) or bare specs."""
    found = {}
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            found[fn["name"]] = fn
    return found


def validator(schema: dict) -> Any:
    """The compiled validator for `schema`; InvalidToolSchema when the schema itself is wrong."""
    found = _validator(json.dumps(schema, sort_keys=True))
    if isinstance(found, str):
        raise InvalidToolSchema(found)
    return found


@lru_cache(maxsize=256)
def _validator(schema_json: str):
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        return f"the tool's parameter schema is invalid ({e.message})"
    return cls(schema)


def arguments_problem(arguments: Any, schema: dict) -> str | None:
    """The first way decoded `arguments` break `schema`, or None; InvalidToolSchema for a bad schema."""
    error = next(iter(validator(schema).iter_errors(arguments)), None)
    return error.message if error is not None else None


def call_problem(call: ToolCall, tools: dict[str, dict]) -> str | None:
    """Why a tool call is invalid against the offered tools (see `tools_by_name`), or None when it is valid.

    Empty arguments count as `{}`; a tool without a parameter schema takes anything.
    """
    fn = tools.get(call.name)
    if fn is None:
        return f"unknown tool {call.name!r}"
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as e:
        return f"{call.name}: arguments are not JSON ({e})"
    schema = fn.get("parameters")
    if not schema:
        return None
    try:
        problem = arguments_problem(args, schema)
    except InvalidToolSchema as e:
        return f"{call.name}: {e}"
    return f"{call.name}: {problem}" if problem is not None else None
