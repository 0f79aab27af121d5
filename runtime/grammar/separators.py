"""The newline between parallel tool calls, enforced while decoding.

Parallel calls are `C(\\nC)*`, but written that way the regex holds every function's
grammar twice (outlines_core does not minimize its DFA): twice the index states, twice
the compile time. The grammar says `(?:C\\n?)+` instead, which also admits two calls
with nothing between them and a newline after the last; this guard removes exactly
those: a "<" right after "</tool_call>", and EOS right after "</tool_call>\\n".
"""

from __future__ import annotations

import threading

import numpy as np

from .requests import TOOL_CALL_CLOSE
from .vocabulary import TokenizerInfo

_CLOSE = TOOL_CALL_CLOSE.encode()
_ADJACENT = _CLOSE + b"<"
_TRAILING = _CLOSE + b"\n"
_OPENERS: dict[str, np.ndarray] = {}
_LOCK = threading.Lock()


def _openers(info: TokenizerInfo) -> np.ndarray:
    """Ids of the tokens containing "<" (the only ones that can start a call)."""
    with _LOCK:
        ids = _OPENERS.get(info.digest)
        if ids is None:
            ids = np.array([i for i, p in enumerate(info.token_bytes) if p and b"<" in p], dtype=np.int64)
            _OPENERS[info.digest] = ids
    return ids


class CallSeparator:
    """Per request: the last bytes written, and what they rule out next."""

    def __init__(self, info: TokenizerInfo):
        self._bytes = info.token_bytes
        self._openers = _openers(info)
        self.tail = b""

    def advance(self, token_id: int) -> None:
        """Remember the bytes `token_id` wrote."""
        piece = self._bytes[token_id] if token_id < len(self._bytes) else None
        if piece:
            self.tail = (self.tail + piece)[-len(_TRAILING) :]

    @property
    def blocks_eos(self) -> bool:
        """The output ends with a newline after a call: another call must follow."""
        return self.tail.endswith(_TRAILING)

    def fits(self, token_id: int) -> bool:
        """Whether `token_id` keeps a newline between one call and the next."""
        piece = self._bytes[token_id] if token_id < len(self._bytes) else None
        return not piece or _ADJACENT not in self.tail[-len(_CLOSE) :] + piece

    def bad(self, allowed: np.ndarray) -> np.ndarray:
        """The allowed tokens that would write "</tool_call><"."""
        tail = self.tail[-len(_CLOSE) :]
        # Only text ending inside "</tool_call>" can be continued into "</tool_call><".
        if not any(tail.endswith(_CLOSE[:k]) for k in range(1, len(_CLOSE) + 1)):
            return self._openers[:0]
        candidates = self._openers[allowed[self._openers]]
        return np.array([i for i in candidates if not self.fits(int(i))], dtype=np.int64)
