"""An OpenAI-style request's tools / tool_choice / response_format → one grammar regex.

The tool-call text is exactly what runtime/models/templates/chatml_tools.jinja renders
for an assistant turn, so a constrained output re-renders to the same tokens:

    <tool_call>
    {"name": "<fn>", "arguments": <args>}
    </tool_call>

and parallel calls are separated by one newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import GrammarError
from .fragments import any_object_regex, escape
from .json_schema import compile_schema

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# OpenAI's rule for function names; it also keeps names free of JSON escapes.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMBINATORS = ("$ref", "allOf", "anyOf", "oneOf", "enum", "const", "type")


@dataclass(frozen=True)
class GrammarSpec:
    """What to enforce: `kind` is "tools", "json_schema" or "json_object".

    `counts` are the bounds checked at decode time (Fragment.counts); for tools each
    path starts with the function name (see counters.py).
    """

    kind: str
    regex: str
    counts: dict = field(default_factory=dict, compare=False)
    parallel_calls: bool = False  # calls separated by the decode-time rule in separators.py


def grammar_for(tools=None, tool_choice=None, parallel_tool_calls=True, response_format=None) -> GrammarSpec | None:
    """The grammar a request asks for, or None when its output is unconstrained.

    Raises GrammarError for a malformed request or a schema that cannot be enforced.
    """
    choice = _tool_choice(tool_choice, has_tools=bool(tools))
    # Next to tool calls the answer's bounds stay in its regex: the decode-time
    # counters follow the calls only.
    format_spec = response_format_grammar(response_format, count=not tools or choice == "none")
    if tools is not None and not isinstance(tools, list):
        raise GrammarError("tools: expected a list of tool definitions")
    if not tools or choice == "none":
        if isinstance(choice, dict) or choice == "required":
            raise GrammarError(f"tool_choice {_describe(choice)} needs a non-empty 'tools' list")
        return format_spec
    functions, counts = [], {}
    for i, tool in enumerate(tools):
        name, fragment = _function(tool, i)
        functions.append((name, fragment.regex))
        counts.update({(kind, (name, *path)): bounds for (kind, path), bounds in fragment.counts.items()})
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
        functions = [(n, args) for n, args in functions if n == wanted]
    call = "(?:" + "|".join(call_regex(name, args) for name, args in functions) + ")"
    # C(\nC)* would hold every function's grammar twice; separators.py makes (C\n?)+ exact.
    calls = f"(?:{call}\\n?)+" if parallel_tool_calls else call
    if choice == "auto":
        # Free text, or (with response_format) the formatted answer; a call may follow
        # free text, and once "<tool_call>" is written only calls can follow.
        if format_spec:
            regex = f"(?:{format_spec.regex}|{calls})"
        else:
            # The small free-text part is the one written twice: the DFA is not minimized,
            # so a repeated sub-regex costs its states again.
            text = free_text_regex()
            regex = f"(?:{text}|(?:{text})?{calls})"
    else:
        regex = calls
    kept = {name for name, _ in functions}
    counts = {key: b for key, b in counts.items() if key[1][0] in kept}
    return GrammarSpec("tools", regex, counts, parallel_calls=bool(parallel_tool_calls))


def response_format_grammar(response_format, *, count: bool = True) -> GrammarSpec | None:
    """The grammar for `response_format` alone (None for absent or {"type": "text"})."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise GrammarError("response_format: expected an object with a 'type'")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", any_object_regex())
    if kind != "json_schema":
        raise GrammarError(f"response_format.type: unsupported type {kind!r} (text, json_object, json_schema)")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise GrammarError("response_format.json_schema: expected an object with a 'schema'")
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        raise GrammarError("response_format.json_schema.name: expected a string")
    fragment = compile_schema(spec["schema"], "response_format.json_schema.schema", count=count)
    return GrammarSpec("json_schema", fragment.regex, fragment.counts)


def call_regex(name: str, arguments_regex: str) -> str:
    """One tool call exactly as the chat template renders it."""
    head = escape(TOOL_CALL_OPEN) + r"\n" + escape(f'{{"name": "{name}", "arguments": ')
    tail = escape("}") + r"\n" + escape(TOOL_CALL_CLOSE)
    return f"{head}{arguments_regex}{tail}"


def free_text_regex(marker: str = TOOL_CALL_OPEN) -> str:
    """Any non-empty text that does not contain `marker` (whose first character occurs
    only once in it).

    Built as (N | G* F)+ G* | G+: N is a character other than the marker's first; G a
    proper prefix of the marker; F a proper prefix followed by a character that neither
    continues it nor restarts it. So the first occurrence of the marker is where the
    grammar after the free text must begin. Non-empty because an empty output is
    useless and outlines_core cannot index a grammar that matches nothing at all.
    """
    first = marker[0]
    if first in marker[1:]:
        raise ValueError("the marker's first character must not repeat inside it")
    prefixes = [marker[:k] for k in range(1, len(marker))]
    other = f"[^{_class_char(first)}]"
    failures = "|".join(f"{escape(p)}[^{_class_char(first)}{_class_char(marker[len(p)])}]" for p in prefixes)
    prefix = "(?:" + "|".join(escape(p) for p in prefixes) + ")"
    return f"(?:(?:{other}|{prefix}*(?:{failures}))+{prefix}*|{prefix}+)"


def _class_char(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x80 else ch


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


def _function(tool, i: int):
    """(name, compiled arguments Fragment) of tools[i], {"type": "function", "function": {...}}."""
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
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if isinstance(parameters, dict) and not any(k in parameters for k in _COMBINATORS):
        # A parameters schema without a type describes the arguments object.
        parameters = {**parameters, "type": "object"}
    fragment = compile_schema(parameters, f"{where}.parameters")
    if fragment.kinds != {"object"}:
        raise GrammarError(f"{where}.parameters: must describe a JSON object (the call's arguments)")
    return name, fragment
