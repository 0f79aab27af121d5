"""Compiled grammars (llguidance matchers) and the LRU that keeps them.

Compiling is milliseconds, but agents resend the same tools every turn, so one compiled
matcher per (grammar digest, tokenizer digest) is kept and each request gets a
`deep_copy` of it. Parser limits bound what any grammar may cost, at compile time and
at every token: a grammar over them is a GrammarError (a 400 that says so).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .errors import GrammarError
from .vocabulary import TokenizerInfo

# Explicit, so the bound is ours and visible: llguidance's defaults, with the lexer's
# state count (memory, ~1-2 kB each) and the grammar size cut to what tool sets need.
LIMIT_SETTINGS = dict(
    max_items_in_row=2000,
    initial_lexer_fuel=1_000_000,  # ~20 ms of regex analysis at compile time
    step_lexer_fuel=200_000,  # ~15 ms per token, worst case
    step_max_items=50_000,  # ~2.5 ms of Earley items per token, worst case
    max_lexer_states=100_000,  # ~100-200 MB at most
    max_grammar_size=200_000,
)


def LIMITS():
    from llguidance import LLParserLimits

    return LLParserLimits(**LIMIT_SETTINGS)


def limit_hit(message: str) -> bool:
    """Whether an llguidance error is a parser limit (too complex), not a grammar mistake."""
    text = message.lower()
    return any(k in text for k in ("fuel", "too complex", "toocomplex", "limit", "too many", "too large", "exceeded"))


class CompiledGrammar:
    """One Lark grammar over one tokenizer: a compiled matcher to copy per request."""

    def __init__(self, lark: str, info: TokenizerInfo):
        from llguidance import LLMatcher

        self.lark = lark
        self.info = info
        started = time.perf_counter()
        matcher = LLMatcher(info.ll_tokenizer(), LLMatcher.grammar_from_lark(lark), log_level=0, limits=LIMITS())
        self.compile_seconds = time.perf_counter() - started
        if matcher.is_error():
            error = matcher.get_error()
            if limit_hit(error):
                raise GrammarError(f"the grammar exceeds the server's parser limits (bounded compile time and memory): {error}")
            raise GrammarError(f"the grammar cannot be built for this tokenizer: {error}")
        self._template = matcher

    def matcher(self):
        """A fresh matcher at the start of the grammar."""
        return self._template.deep_copy()


class GrammarCache:
    """A count-bounded LRU of CompiledGrammar keyed by (grammar digest, tokenizer digest)."""

    def __init__(self, maxsize: int = 64):
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = {}
        self.hits = 0
        self.compiles = 0

    def get(self, lark: str, info: TokenizerInfo, on_compile: Callable[[float], None] | None = None) -> CompiledGrammar:
        """The compiled grammar for `lark` over `info`, compiling it on a miss
        (`on_compile(seconds)` is then called: the /metrics histogram)."""
        key = (hashlib.sha256(lark.encode("utf-8")).hexdigest(), info.digest)
        with self._lock:
            grammar = self._items.get(key)
            if grammar is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return grammar
            building = self._building.setdefault(key, threading.Lock())
        # One compile per key at a time; other keys compile concurrently.
        with building:
            with self._lock:
                grammar = self._items.get(key)
                if grammar is not None:
                    self.hits += 1
                    return grammar
            try:
                grammar = CompiledGrammar(lark, info)
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            if on_compile is not None:
                on_compile(grammar.compile_seconds)
            with self._lock:
                self.compiles += 1
                self._items[key] = grammar
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
                self._building.pop(key, None)
            return grammar

    def clear(self) -> None:
        """Drop every compiled grammar (tests, or after swapping tokenizers)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
