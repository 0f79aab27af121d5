"""An OpenAI-style request's tools / tool_choice / response_format → one Lark grammar.

llguidance compiles the grammar; this module only writes it. The tool-call text is
exactly what runtime/models/templates/chatml_tools.jinja renders for an assistant turn,
so a constrained output re-renders to the same tokens:

    <tool_call>
    {"name": "<fn>", "arguments": <args>}
    </tool_call>

parallel calls are separated by one newline, and JSON uses the template's (json.dumps')
separators ", " and ": " with no other whitespace, so most of a call's skeleton is
forced (one continuation) and fed without sampling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .deferred import insertions
from .errors import GrammarError
from .schemas import arguments_schema, json_schema

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# OpenAI's rule for function names; it also keeps names free of JSON and Lark escapes.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Free text without the call marker; and free text ending at the marker's first
# occurrence. One lexeme each: llguidance's lexer is greedy, so "text, then a call" must
# be one lexeme that knows where the text ends, not two that would have to backtrack.
_TEXT = r"TEXT: /(?s:.+)/ & ~/(?s:.*<tool_call>.*)/"
_TEXT_THEN_CALL = r"TEXT_THEN_CALL: /(?s:.*)<tool_call>/ & ~/(?s:.*<tool_call>.+)/"
ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class GrammarSpec:
    """What to enforce: `kind` is "tools", "json_schema" or "json_object"; `lark` the grammar."""

    kind: str
    lark: str
    parallel_calls: bool = False


def grammar_for(tools=None, tool_choice=None, parallel_tool_calls=True, response_format=None, deferred=False) -> GrammarSpec | None:
    """The grammar a request asks for, or None when its output is unconstrained.

    `deferred`: each call's chosen name is followed by that tool's schema as a literal
    (deferred.schema_insertion), fed by the engine before the model writes the arguments.

    Raises GrammarError for a malformed request or a schema that cannot be enforced.
    """
    choice = _tool_choice(tool_choice, has_tools=bool(tools))
    answer = response_format_schema(response_format)
    if tools is not None and not isinstance(tools, list):
        raise GrammarError("tools: expected a list of tool definitions")
    if not tools or choice == "none":
        if isinstance(choice, dict) or choice == "required":
            raise GrammarError(f"tool_choice {_describe(choice)} needs a non-empty 'tools' list")
        if answer is None:
            return None
        kind, schema = answer
        return GrammarSpec(kind, f"start: %json {_embed(schema)}\n")
    functions = [_function(tool, i) for i, tool in enumerate(tools)]
    names = [name for name, _ in functions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GrammarError(f"tools: function names must be unique, repeated: {', '.join(duplicates)}")
    if isinstance(choice, dict):
        wanted = choice["function"]["name"]
        if wanted not in names:
            raise GrammarError(
                f"tool_choice.function.name: unknown function {wanted!r}; tools define {', '.join(names)}"
            )
        functions = [(n, s) for n, s in functions if n == wanted]
    inserts = insertions(tools) if deferred else {}
    rules = [f'body: {" | ".join(f"body_{i}" for i in range(len(functions)))}']
    for i, (name, schema) in enumerate(functions):
        head = json.dumps(f'\n{{"name": "{name}"{inserts.get(name, "")}, "arguments": ')
        tail = json.dumps("}\n" + TOOL_CALL_CLOSE)
        rules.append(f"body_{i}: {head} %json {_embed(schema)} {tail}")
    more = ' ("\\n" call)*' if parallel_tool_calls else ""
    rules.append(f'call: "{TOOL_CALL_OPEN}" body')
    if choice == "auto" and answer:
        # The formatted answer, or calls.
        start = f"start: answer | call{more}"
        rules.append(f"answer: %json {_embed(answer[1])}")
    elif choice == "auto":
        # Free text, or calls after optional free text.
        start = f"start: TEXT | TEXT_THEN_CALL body{more}"
        rules += [_TEXT, _TEXT_THEN_CALL]
    else:
        start = f"start: call{more}"
    return GrammarSpec("tools", "\n".join([start, *rules]) + "\n", parallel_calls=bool(parallel_tool_calls))


def response_format_schema(response_format) -> tuple[str, dict] | None:
    """(kind, JSON schema) for `response_format` (None for absent or {"type": "text"})."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise GrammarError("response_format: expected an object with a 'type'")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return "json_object", ANY_OBJECT
    if kind != "json_schema":
        raise GrammarError(f"response_format.type: unsupported type {kind!r} (text, json_object, json_schema)")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise GrammarError("response_format.json_schema: expected an object with a 'schema'")
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        raise GrammarError("response_format.json_schema.name: expected a string")
    return "json_schema", json_schema(spec["schema"], "response_format.json_schema.schema")


def _embed(schema: dict) -> str:
    """A schema as the JSON text after Lark's `%json`, with the template's separators."""
    options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return json.dumps({**schema, "x-guidance": options}, ensure_ascii=False, allow_nan=False)


def _tool_choice(choice, *, has_tools: bool):
    if choice is None:
        return "auto" if has_tools else "none"
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return choice
    raise GrammarError(
        'tool_choice: expected "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
    )


def _describe(choice) -> str:
    return repr(choice["function"]["name"]) if isinstance(choice, dict) else repr(choice)


def _function(tool, i: int) -> tuple[str, dict]:
    """(name, arguments schema) of tools[i], {"type": "function", "function": {...}}."""
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise GrammarError(f"{where}: expected an object")
    if tool.get("type", "function") != "function":
        raise GrammarError(f"{where}.type: unsupported tool type {tool.get('type')!r} (only 'function')")
    function = tool.get("function", tool if "name" in tool else None)
    if not isinstance(function, dict):
        raise GrammarError(f"{where}.function: expected an object with 'name' and 'parameters'")
    if "function" in tool:
        where += ".function"
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise GrammarError(f"{where}.name: function names are 1-64 characters of a-z, A-Z, 0-9, _ and -, got {name!r}")
    return name, arguments_schema(function.get("parameters"), f"{where}.parameters")
