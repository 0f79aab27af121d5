"""Turning the model's text, piece by piece, into OpenAI content and tool calls.

The model writes calls as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
(the chat template's format). Text outside those blocks is content; a complete block
becomes one or more tool calls. Stop strings end plain text (never the inside of a tool
call or a JSON answer, whose validity the grammar guarantees). Text that might still turn
into a marker is held back, so a stream never shows half of ``<tool_call>``.

The template renders an assistant turn as ``content + "\\n" + <tool_call>...`` with one
newline between calls; the separator newline is dropped from the content here so the
next turn re-renders to exactly the sampled text (and reuses its token ids).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass
class Call:
    id: str
    name: str
    arguments: str


@dataclass
class Piece:
    """What one `feed` adds: content text and completed calls."""

    content: str = ""
    calls: list[Call] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.calls)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _held_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a marker."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


class Assembler:
    """Splits streamed text into content and tool calls; notices stop strings.

    `parse` turns one ``<tool_call>...</tool_call>`` block into (name, arguments_json)
    pairs (the grammar package's `parse_tool_calls`); a block it rejects stays content,
    so nothing the model wrote is dropped.
    """

    def __init__(self, *, tools: bool, stop: list[str], parse: Callable[[str], list] | None = None):
        self.tools = tools
        self.stop = [s for s in stop if s]
        self.parse = parse
        self.markers = self.stop + ([OPEN] if tools else [])
        self.in_call = False
        self.pending = ""
        self.stopped = False
        self.content: list[str] = []
        self.calls: list[Call] = []

    def feed(self, text: str) -> Piece:
        """Consume the next decoded text; returns what can be shown now."""
        if self.stopped:
            return Piece()
        self.pending += text
        out = Piece()
        while self.pending and not self.stopped:
            if self.in_call:
                end = self.pending.find(CLOSE)
                if end < 0:
                    break
                block = OPEN + self.pending[: end + len(CLOSE)]
                self.pending = self.pending[end + len(CLOSE) :]
                self.in_call = False
                self._close_call(block, out)
                continue
            hit, marker = self._first_marker()
            if hit < 0:
                keep = _held_suffix(self.pending, self.markers)
                # One trailing newline may be the separator before a call: hold it too.
                if self.tools and self.pending[: len(self.pending) - keep].endswith("\n"):
                    keep += 1
                self._emit(self.pending[: len(self.pending) - keep], out)
                self.pending = self.pending[len(self.pending) - keep :]
                break
            before, self.pending = self.pending[:hit], self.pending[hit + len(marker) :]
            if marker == OPEN:
                self._emit(before[:-1] if before.endswith("\n") else before, out)
                self.in_call = True
            else:
                self._emit(before, out)
                self.stopped = True
                self.pending = ""
        return out

    def finish(self) -> Piece:
        """Flush at the end of generation: held text is content, an unclosed call too."""
        out = Piece()
        if self.in_call:
            # Cut off mid-call (max_tokens): keep the raw text rather than drop it.
            self._emit(OPEN + self.pending, out)
        elif not self.stopped:
            self._emit(self.pending, out)
        self.pending = ""
        self.in_call = False
        return out

    def text(self) -> str | None:
        """The message content: None when the answer is only tool calls."""
        text = "".join(self.content)
        return None if (self.calls and not text) else text

    def _first_marker(self) -> tuple[int, str]:
        best, which = -1, ""
        for m in self.markers:
            i = self.pending.find(m)
            if i >= 0 and (best < 0 or i < best):
                best, which = i, m
        return best, which

    def _emit(self, text: str, out: Piece) -> None:
        if text:
            self.content.append(text)
            out.content += text

    def _close_call(self, block: str, out: Piece) -> None:
        parsed = []
        if self.parse is not None:
            try:
                parsed = list(self.parse(block))
            except ValueError:
                parsed = []
        if not parsed:
            self._emit(block, out)
            return
        for p in parsed:
            call = Call(id=new_call_id(), name=p.name, arguments=p.arguments_json)
            self.calls.append(call)
            out.calls.append(call)
