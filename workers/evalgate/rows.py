"""The eval gate's row and output types: what one JSON Lines row holds, what the model said.

A row (one line of a suite's data file)::

    {"id": "weather-1",
     "prompt": "What's the weather in Paris?",          # or "messages": [{"role": ..., "content": ...}]
     "tools": [{"type": "function", "function": {...}}],  # OpenAI tool definitions
     "tool_choice": "auto",                             # optional: none | auto | required | {"type": "function", ...}
     "parallel_tool_calls": true,                       # optional
     "response_format": {"type": "json_schema", ...},   # optional: constrained JSON answers
     "schema": {...},                                   # json_schema suites: validate against this
     "expected": ...,                                   # per kind, see below
     "max_tokens": 64,                                  # optional, else the suite's
     "metadata": {...}}                                 # free-form, kept for custom scorers

`expected` per kind:
- tool_call: a list of calls, all of which the model must make (any order), each
  ``{"name": "get_weather", "arguments": {"city": ["Paris", "paris"], "unit": ["celsius", ""]}}``;
  every argument lists its acceptable values ("" = may be omitted; a non-list value is the
  one acceptable value). ``[]`` means the model must not call any tool.
- exact_match: a string, or a list of acceptable strings.
- json_schema: optional; when given the parsed answer must also equal it.
- latency: unused. custom: whatever the scorer reads.

The request sent for a row is exactly what an OpenAI client would send, so the runtime
applies the same grammar constraints (tools, tool_choice, response_format) as in production.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tinygpt.queue.errors import PermanentError


class GateInputError(PermanentError):
    """Bad configuration or input (a missing file, a malformed row, an unknown scorer...).

    `tinygpt eval-gate` exits 2 with this message; the queue fails the eval job at once
    (retrying cannot fix a file). The message names the file and line where there is one.
    """


class EvalRow(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    schema: dict[str, Any] | None = None
    expected: Any = None
    max_tokens: int | None = None
    metadata: dict[str, Any] = {}

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation to send: `messages`, or `prompt` as one user message."""
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt or ""}]


class Item(msgspec.Struct, frozen=True):
    """A row with where it came from (for messages naming file and line)."""

    id: str
    line: int
    row: EvalRow


class Call(msgspec.Struct, frozen=True):
    name: str
    # The arguments as the model wrote them (JSON text).
    arguments: str


class Output(msgspec.Struct, kw_only=True):
    """One answer of the model under test, as the runtime returned it to its client."""

    content: str | None = None
    calls: list[Call] = []
    finish_reason: str = ""
    completion_tokens: int = 0
    # Seconds from sending the request to the first streamed token, and to the end.
    ttft_s: float = 0.0
    latency_s: float = 0.0

    def shown(self, limit: int = 2000) -> str:
        """A short text of the answer for reports: the calls as JSON, else the content."""
        if self.calls:
            text = msgspec.json.encode([{"name": c.name, "arguments": c.arguments} for c in self.calls]).decode()
        else:
            text = self.content or ""
        return text if len(text) <= limit else text[:limit] + "…"
