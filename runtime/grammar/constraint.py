"""The per-request grammar state, usable as an mlx-lm logits processor.

Masks are applied portably: the cached per-state bitmask is unpacked in numpy and
applied with one `mx.where`, which works on every MLX backend (outlines' MLX kernels
are Metal-only and fail with "No Metal back-end" elsewhere). Where Metal is available
the bitmask goes to outlines_core's Metal kernel directly.
"""

from __future__ import annotations

import functools

import numpy as np

from .compiled import CompiledGrammar
from .counters import CountGuard
from .separators import CallSeparator


@functools.lru_cache(maxsize=1)
def _metal_kernel():
    """outlines_core's Metal bitmask kernel, or None off Metal (imported only on Metal)."""
    import mlx.core as mx

    if not mx.metal.is_available():
        return None
    try:
        from outlines_core.kernels.mlx import apply_token_bitmask
    except (ImportError, RuntimeError, ValueError):
        return None
    return apply_token_bitmask


class Constraint:
    """The grammar state of one request's output.

    Call it as an mlx-lm logits processor: `constraint(tokens, logits)` advances by the
    last sampled token (`tokens[-1]`; not on the first call, where `tokens` is the
    prompt) and returns the logits with every disallowed token at -inf. Or drive it by
    hand with `advance(token_id)` and `allowed()`.
    """

    def __init__(self, grammar: CompiledGrammar, kind: str, counts: dict | None = None, *, parallel_calls: bool = False):
        from outlines_core import Guide

        self.kind = kind
        self.grammar = grammar
        self._guide = Guide(grammar.index)
        self._eos = frozenset(grammar.info.eos_token_ids)
        self._started = False
        self._ended = False
        # String lengths and array sizes the regex leaves to decode time (counters.py).
        self._counts = CountGuard(grammar.info, counts, tools=kind == "tools") if counts else None
        # The newline between parallel calls (separators.py).
        self._separator = CallSeparator(grammar.info) if parallel_calls else None

    def __call__(self, tokens, logits):
        if self._started:
            self.advance(int(tokens[-1].item()))
        self._started = True
        return self.apply(logits)

    def _mask(self) -> tuple[np.ndarray, bool, bool, np.ndarray | None]:
        """(bitmask words, EOS allowed, only EOS allowed, the mask as bools if at hand)."""
        words, eos_allowed, only_eos = self._state()
        if self._ended or (self._counts is None and self._separator is None):
            return words, eos_allowed, only_eos, None
        allowed = self._unpack(words, self.grammar.info.vocab_size)
        narrowed = self._counts.restrict(allowed) if self._counts is not None else None
        if self._separator is not None:
            current = allowed if narrowed is None else narrowed
            bad = self._separator.bad(current)
            if self._separator.blocks_eos and eos_allowed:
                bad = np.concatenate([bad, np.fromiter(self._eos, dtype=np.int64)])
                eos_allowed = False
            if bad.size:
                narrowed = current.copy()
                narrowed[bad[bad < narrowed.size]] = False
        if narrowed is None:
            return words, eos_allowed, only_eos, allowed
        packed = np.packbits(narrowed, bitorder="little")
        words = np.zeros(self.grammar.words, dtype=np.int32)
        words.view(np.uint8)[: packed.size] = packed
        return words, eos_allowed, only_eos, narrowed

    def _state(self) -> tuple[np.ndarray, bool, bool]:
        """The regex's own (words, EOS allowed, only EOS) here, before counts and separators."""
        if self._ended:
            return self._eos_only
        return self.grammar.state_mask(self._guide.get_state(), self._guide)

    @staticmethod
    def _unpack(words: np.ndarray, count: int) -> np.ndarray:
        return np.unpackbits(words.view(np.uint8), bitorder="little", count=count).view(bool)

    @functools.cached_property
    def _eos_only(self) -> tuple[np.ndarray, bool, bool]:
        words = np.zeros(self.grammar.words, dtype=np.int32)
        view = words.view(np.uint32)
        for token_id in self._eos:
            view[token_id // 32] |= np.uint32(1 << (token_id % 32))
        return words, True, True

    def advance(self, token_id: int) -> None:
        """Move past `token_id`; ValueError if the grammar does not allow it here."""
        token_id = int(token_id)
        if token_id in self._eos:
            if not self.eos_allowed:
                raise ValueError(f"EOS (token {token_id}) before the grammar is complete")
            self._ended = True
            return
        if self._ended:
            raise ValueError(f"token {token_id} after EOS")
        if not self._guide.accepts_tokens([token_id]):
            raise ValueError(f"token {token_id} is not allowed by the grammar here")
        if self._counts is not None and not self._counts.fits(token_id):
            raise ValueError(f"token {token_id} breaks a length or size bound here")
        if self._separator is not None and not self._separator.fits(token_id):
            raise ValueError(f"token {token_id} starts a tool call without the newline before it")
        self._guide.advance(token_id, return_tokens=False)
        if self._counts is not None:
            self._counts.advance(token_id)
        if self._separator is not None:
            self._separator.advance(token_id)

    def allowed(self) -> np.ndarray:
        """Boolean mask over the model's vocabulary: which tokens may come next."""
        words, _, _, allowed = self._mask()
        return allowed if allowed is not None else self._unpack(words, self.grammar.info.vocab_size)

    @property
    def eos_allowed(self) -> bool:
        """The output may end here (the grammar accepts what was generated so far)."""
        if self._separator is not None and not self._ended and self._separator.blocks_eos:
            return False
        return self._state()[1]

    @property
    def done(self) -> bool:
        """The grammar is complete: EOS is the only token allowed."""
        return self._state()[2]

    def apply(self, logits):
        """`logits` ((1, V) or (V,), V possibly padded) with disallowed tokens at -inf."""
        import mlx.core as mx

        words, _, _, mask = self._mask()
        kernel = _metal_kernel()
        if kernel is not None:
            flat = logits.ndim == 1
            out = kernel(logits[None] if flat else logits, words[None])
            return out[0] if flat else out
        width = logits.shape[-1]
        if mask is None or mask.size != width:
            mask = self._unpack(words, min(width, words.size * 32))
        if mask.size < width:
            mask = np.concatenate([mask, np.zeros(width - mask.size, dtype=bool)])
        return mx.where(mx.array(mask), logits, float("-inf"))
