"""Compiled grammars (outlines_core indices) and the LRU that keeps them.

Compiling a regex into a token-level index walks every token through the DFA from
every state: 10 ms to seconds. Agents resend the same tools every turn, so indices are
kept per (regex digest, tokenizer digest); the regex is a canonical function of the
enforced parts of a schema, so tool sets that differ only in descriptions share one.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

import numpy as np

from .errors import GrammarError
from .vocabulary import TokenizerInfo


def end_anchored(regex: str) -> str:
    """`regex` with an end-of-text anchor, so the index accepts exactly its language.

    outlines_core determinizes with leftmost-first match semantics: once a thread
    matches, lower-priority threads are dropped, so `a|ab` (or free text followed by
    an optional tool call) would reject "ab". With `$` no thread matches before the
    end of the text and nothing is dropped. outlines_core cannot build a start state
    for a `$`-anchored regex that matches the empty string, so grammars never do.
    """
    return f"(?:{regex})$"


class CompiledGrammar:
    """One regex over one tokenizer: the index, plus an allowed-token bitmask per state.

    Bitmasks are int32 words (bit i of word w = token 32*w + i), the layout of
    outlines_core's `Guide.write_mask_into` and of its Metal kernel. They are cached per
    DFA state and shared by every request using this grammar.
    """

    def __init__(self, regex: str, info: TokenizerInfo):
        from outlines_core import Index

        self.regex = regex
        self.info = info
        started = time.perf_counter()
        try:
            self.index = Index(end_anchored(regex), info.vocabulary())
        except ValueError as exc:
            raise GrammarError(f"the grammar cannot be built for this tokenizer: {exc}") from None
        self.compile_seconds = time.perf_counter() - started
        self.words = (info.vocab_size + 31) // 32
        self._masks: dict[int, tuple[np.ndarray, bool, bool]] = {}
        eos = np.asarray(info.eos_token_ids, dtype=np.int64)
        self._eos_word, self._eos_bit = eos // 32, (eos % 32).astype(np.uint32)
        self._primary = (int(eos[0]) // 32, int(eos[0]) % 32)

    def state_mask(self, state: int, guide) -> tuple[np.ndarray, bool, bool]:
        """(bitmask words, eos allowed, only eos allowed) for `state`.

        `guide` must stand at `state`; it writes the mask on a cache miss.
        """
        cached = self._masks.get(state)
        if cached is not None:
            return cached
        words = np.zeros((1, self.words), dtype=np.int32)
        guide.write_mask_into(words.ctypes.data, words.size, words.itemsize)
        words = words[0]
        view = words.view(np.uint32)
        word, bit = self._primary
        eos_allowed = bool((view[word] >> np.uint32(bit)) & np.uint32(1))
        if eos_allowed:
            # Every EOS id ends the output, not just the one outlines_core knows.
            np.bitwise_or.at(view, self._eos_word, np.left_shift(np.uint32(1), self._eos_bit))
        only_eos = eos_allowed and int(np.unpackbits(words.view(np.uint8)).sum()) == len(set(self.info.eos_token_ids))
        entry = (words, eos_allowed, only_eos)
        self._masks[state] = entry
        return entry


class GrammarCache:
    """A count-bounded LRU of CompiledGrammar keyed by (regex digest, tokenizer digest)."""

    def __init__(self, maxsize: int = 64):
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = {}
        self.hits = 0
        self.compiles = 0

    def get(self, regex: str, info: TokenizerInfo) -> CompiledGrammar:
        """The compiled grammar for `regex` over `info`, compiling it on a miss."""
        key = (hashlib.sha256(regex.encode("utf-8")).hexdigest(), info.digest)
        with self._lock:
            grammar = self._lookup(key)
            if grammar is not None:
                return grammar
            building = self._building.setdefault(key, threading.Lock())
        # One compile per key; other keys (and hits) proceed meanwhile.
        with building:
            with self._lock:
                grammar = self._lookup(key)
                if grammar is not None:
                    return grammar
            try:
                grammar = CompiledGrammar(regex, info)
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:
                self.compiles += 1
                self._items[key] = grammar
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
                self._building.pop(key, None)
        return grammar

    def _lookup(self, key) -> CompiledGrammar | None:
        grammar = self._items.get(key)
        if grammar is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return grammar

    def clear(self) -> None:
        """Drop every compiled grammar (tests, or after swapping tokenizers)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
