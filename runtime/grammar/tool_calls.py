"""Reading tool calls back out of generated text (the chat template's format)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .requests import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)
# The layout the grammar and the template write; arguments are then kept byte for byte.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*')
_KEY = re.compile(r'("(?:[^"\\]|\\.)*")\s*:\s*')
_SEP = re.compile(r"\s*,\s*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedCall:
    """One tool call: the function name and its arguments as JSON text.

    `arguments_json` is the exact text the model wrote when it wrote the usual layout
    (so re-rendering the conversation reproduces the same tokens), else compact JSON.
    """

    name: str
    arguments_json: str


def parse_tool_calls(text: str) -> list[ParsedCall]:
    """Every well-formed `<tool_call>...</tool_call>` block in `text`, in order.

    Blocks whose body is not a JSON object with a string "name" and an object
    "arguments" are skipped (an unconstrained model may write anything there).
    """
    calls = []
    for match in _BLOCK.finditer(text):
        call = _parse_body(match.group(1))
        if call is not None:
            calls.append(call)
    return calls


def split_tool_calls(text: str) -> tuple[str, list[ParsedCall]]:
    """(content before the first tool call, the calls): an assistant turn's two parts.

    The newline the chat template puts between content and the first call is removed
    from the content.
    """
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return text, []
    content = text[:start]
    if content.endswith("\n"):
        content = content[:-1]
    return content, parse_tool_calls(text[start:])


def _parse_body(body: str) -> ParsedCall | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    start = _arguments_start(body, value["name"])
    if start is not None:
        try:
            parsed, end = _DECODER.raw_decode(body, start)
        except json.JSONDecodeError:
            parsed = None
        if parsed == arguments and isinstance(value.get("arguments"), dict):
            return ParsedCall(value["name"], body[start:end])
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def _arguments_start(body: str, name: str) -> int | None:
    """Where the arguments' text starts in a body of the usual layout: the name first,
    any other keys (a deferred call's fed schema, deferred.py) between it and the arguments."""
    head = _HEAD.match(body)
    if head is None or json.loads(head.group(1)) != name:
        return None
    at = head.end()
    while True:
        key = _KEY.match(body, at)
        if key is None:
            return None
        if json.loads(key.group(1)) == "arguments":
            return key.end()
        try:
            _, at = _DECODER.raw_decode(body, key.end())
        except json.JSONDecodeError:
            return None
        sep = _SEP.match(body, at)
        if sep is None:
            return None
        at = sep.end()
