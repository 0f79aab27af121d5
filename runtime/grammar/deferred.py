"""Deferred tools: a one-line index in the prompt, each tool's schema only once chosen.

With `tool_mode: deferred` the system prompt lists every tool as one line (its name and
the first sentence of its description) instead of its full JSON schema. A call is then
decoded in two phases inside one request: the grammar lets the model pick a name from
the index; the chosen tool's schema follows the name as a literal of the grammar, so the
engine feeds it (forced tokens: model input, not model output) before the model writes
the arguments under that schema. The call's text in the template's layout:

    <tool_call>
    {"name": "get_weather", "parameters": {...the schema...}, "arguments": {"city": "Paris"}}
    </tool_call>

The client sees an ordinary call (name, arguments); the trajectory keeps the whole text,
and a later turn renders earlier calls the same way, so a session's token stream and
the prefix cache carry over from turn to turn.
"""

from __future__ import annotations

import json
import re

from ..contracts.tool_mode import TOOL_MODES, ToolMode, check_tool_mode  # noqa: F401  (re-exported)

# The index line keeps descriptions short: a first sentence, at most this many characters.
INDEX_LINE_CHARS = 160
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")
_SPACE = re.compile(r"\s+")


def _function(tool: dict) -> dict:
    return tool.get("function", tool) if isinstance(tool, dict) else {}


def first_sentence(description: str | None) -> str:
    """The first sentence of a description, on one line, at most INDEX_LINE_CHARS long."""
    text = (description or "").strip()
    match = _SENTENCE_END.search(text)
    sentence = _SPACE.sub(" ", text[: match.start()] if match else text).strip()
    if len(sentence) > INDEX_LINE_CHARS:
        sentence = sentence[: INDEX_LINE_CHARS - 3].rstrip() + "..."
    return sentence


def index_line(tool: dict) -> str:
    """`name: first sentence` (or the bare name): a tool's line in the prompt's index."""
    f = _function(tool)
    summary = first_sentence(f.get("description"))
    return f"{f.get('name')}: {summary}" if summary else str(f.get("name"))


def schema_insertion(tool: dict) -> str:
    """The text fed after a chosen tool's name, before its arguments: its full definition.

    `, "description": ...` (only where the description says more than its index line)
    then `, "parameters": <schema>`, as JSON in the template's layout (separators ", " and
    ": ", like the template's `tojson`).
    """
    f = _function(tool)
    out = ""
    description = (f.get("description") or "").strip()
    if description and _SPACE.sub(" ", description) != first_sentence(description):
        out += ', "description": ' + json.dumps(description, ensure_ascii=False)
    parameters = f.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    return out + ', "parameters": ' + json.dumps(parameters, ensure_ascii=False)


def insertions(tools: list[dict] | None) -> dict[str, str]:
    """Function name -> its schema insertion, for every tool of a request."""
    return {str(_function(t).get("name")): schema_insertion(t) for t in tools or []}


def fed_indices(text: str, text_end: list[int], inserts: dict[str, str]) -> list[int]:
    """Indices of the output ids whose text overlaps a fed schema insertion.

    `text` is the output text, `text_end[i]` the characters of it after output id i. The
    insertions sit right after each call's name (`<tool_call>\\n{"name": "NAME"`); an id
    that straddles an insertion's edge counts as fed (the model did not choose all of it).
    """
    spans = []
    at = 0
    while (m := _CALL_HEAD.search(text, at)) is not None:
        insert = inserts.get(m.group(1), "")
        at = m.end()
        if insert and text.startswith(insert, at):
            spans.append((at, at + len(insert)))
            at += len(insert)
    out = []
    start = 0
    for i, end in enumerate(text_end):
        if any(start < b and end > a for a, b in spans):
            out.append(i)
        start = end
    return out


_CALL_HEAD = re.compile(r'<tool_call>\n\{"name": "([A-Za-z0-9_-]{1,64})"')
