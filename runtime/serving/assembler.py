"""Turning the model's text, piece by piece, into OpenAI content and tool calls.

The model writes calls as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
(the chat template's format). Text outside those blocks is content; a complete block
becomes one or more tool calls. Stop strings end plain text (never the inside of a tool
call or a JSON answer, whose validity the grammar guarantees): a stop string that is the
start of ``<tool_call>`` gives way to the call. Text that might still turn into a marker
is held back, so a stream never shows half of ``<tool_call>``.

With `parts` on (grammar-constrained output, always in the template's layout) a call is
also streamed as it is decoded, in OpenAI's delta shape: a first part with its id and
name, then argument fragments. A call that repeats an earlier call of the same turn
exactly ends the turn instead of being emitted (small models loop on the same call until
max_tokens); its parts are held back while it still could be such a repeat, and `cut`
says where in the text the repeat began, so the engine can drop its tokens.

The template renders an assistant turn as ``content + "\\n" + <tool_call>...`` with one
newline between calls; the separator newline is dropped from the content here so the
next turn re-renders to exactly the sampled text (and reuses its token ids).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from collections.abc import Callable

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
# The call body's head in the template's layout: the name, then (deferred tools: its fed
# schema, then) the arguments.
_HEAD = re.compile(r'\n\{"name": "([A-Za-z0-9_-]{1,64})"')
_ARGUMENTS = ', "arguments": '
_TAIL = "}\n" + CLOSE


@dataclass
class Call:
    id: str
    name: str
    arguments: str


@dataclass
class CallPart:
    """A streamed piece of call `index`: the first has its id and name, the rest only
    argument text (OpenAI's tool-call delta)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass
class Piece:
    """What one `feed` adds: content text, completed calls, streamed call parts."""

    content: str = ""
    calls: list[Call] = field(default_factory=list)
    parts: list[CallPart] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.calls or self.parts)


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

    def __init__(self, *, tools: bool, stop: list[str], parse: Callable[[str], list] | None = None, parts: bool = False,
                 inserts: dict[str, str] | None = None):
        self.tools = tools
        # Deferred tools: function name -> the schema text fed between its name and arguments.
        self.inserts = inserts or {}
        self.stop = [s for s in stop if s]
        self.parse = parse
        self.parts = parts and tools
        self.markers = self.stop + ([OPEN] if tools else [])
        self.in_call = False
        self.pending = ""
        self.stopped = False
        self.content: list[str] = []
        self.calls: list[Call] = []
        self.fed = 0  # characters fed so far
        self.cut: int | None = None  # where a repeated call began (it ends the turn)
        self._call_start = 0
        self._streamed: Call | None = None  # the call being streamed: id, name, arguments sent

    def feed(self, text: str) -> Piece:
        """Consume the next decoded text; returns what can be shown now."""
        if self.stopped:
            return Piece()
        self.pending += text
        self.fed += len(text)
        out = Piece()
        while self.pending and not self.stopped:
            if self.in_call:
                end = self.pending.find(CLOSE)
                if end < 0:
                    if self.parts:
                        self._stream_call(out)
                    break
                block = OPEN + self.pending[: end + len(CLOSE)]
                self.pending = self.pending[end + len(CLOSE) :]
                self.in_call = False
                self._close_call(block, out)
                continue
            hit, marker = self._first_marker()
            if hit >= 0 and marker != OPEN and self.tools and OPEN.startswith(self.pending[hit:hit + len(OPEN)]):
                # A stop string where a call may be starting: wait, the call wins.
                break
            if hit < 0:
                keep = _held_suffix(self.pending, self.markers)
                # One trailing newline may be the separator before a call: hold it too.
                if self.tools and self.pending[: len(self.pending) - keep].endswith("\n"):
                    keep += 1
                self._emit(self.pending[: len(self.pending) - keep], out)
                self.pending = self.pending[len(self.pending) - keep :]
                break
            start = self.fed - len(self.pending) + hit
            before, self.pending = self.pending[:hit], self.pending[hit + len(marker) :]
            if marker == OPEN:
                self._emit(before[:-1] if before.endswith("\n") else before, out)
                self._call_start = start - 1 if before.endswith("\n") else start
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
            # At the same place the call marker wins over a stop string.
            if i >= 0 and (best < 0 or i < best or (i == best and m == OPEN)):
                best, which = i, m
        return best, which

    def _stream_call(self, out: Piece) -> None:
        """Stream the open call's name and argument text decoded so far, unless it may
        still turn out to repeat an earlier call of this turn."""
        head = _HEAD.match(self.pending)
        if head is None:
            return
        name, lead = head.group(1), self.inserts.get(head.group(1), "") + _ARGUMENTS
        if not self.pending.startswith(lead, head.end()):
            return
        args = self.pending[head.end() + len(lead) :]
        # The end of the text may be the closing "}\n</tool_call>" rather than arguments.
        hold = next((n for n in range(min(len(_TAIL), len(args)), 0, -1) if _TAIL.startswith(args[-n:])), 0)
        ready = args[: len(args) - hold]
        if any(c.name == name and c.arguments.startswith(ready) for c in self.calls):
            return  # could still be a repeat: show nothing yet
        call = self._streamed
        if call is None:
            call = self._streamed = Call(id=new_call_id(), name=name, arguments="")
            out.parts.append(CallPart(len(self.calls), call.id, name, ""))
        if len(ready) > len(call.arguments) and ready.startswith(call.arguments):
            out.parts.append(CallPart(len(self.calls), None, None, ready[len(call.arguments) :]))
            call.arguments = ready

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
        streamed, self._streamed = self._streamed, None
        if not parsed:
            self._emit(block, out)
            return
        if self.parts and any((p.name, p.arguments_json) == (c.name, c.arguments) for p in parsed for c in self.calls):
            # The same call again: the turn ends here, without it.
            self.cut = self._call_start
            self.stopped = True
            self.pending = ""
            return
        for p in parsed:
            call = Call(id=new_call_id(), name=p.name, arguments=p.arguments_json)
            if self.parts and streamed is not None and len(parsed) == 1 and streamed.name == p.name:
                call.id = streamed.id
                if p.arguments_json.startswith(streamed.arguments):
                    rest = p.arguments_json[len(streamed.arguments) :]
                    if rest:
                        out.parts.append(CallPart(len(self.calls), None, None, rest))
            elif self.parts:
                out.parts.append(CallPart(len(self.calls), call.id, call.name, call.arguments))
            self.calls.append(call)
            out.calls.append(call)
