"""The per-request grammar state, usable as an mlx-lm logits processor.

llguidance's matcher computes each step's allowed tokens as a bitmask (int32 words,
bit i of word w = token 32*w + i) on the CPU. Masks are applied portably: unpacked in
numpy and applied with one `mx.where`, which works on every MLX backend; where MLX runs
on Metal the bitmask goes to llguidance's Metal kernel instead.
"""

from __future__ import annotations

import functools

import numpy as np

from .compiled import CompiledGrammar, limit_hit
from .errors import GrammarError


@functools.lru_cache(maxsize=1)
def _metal_kernel():
    """llguidance's Metal bitmask kernel, or None off Metal (imported only on Metal)."""
    import mlx.core as mx

    if not mx.metal.is_available():
        return None
    try:
        from llguidance.mlx import apply_token_bitmask
    except (ImportError, RuntimeError, ValueError):  # llguidance built without its MLX kernel: numpy masks
        return None
    return apply_token_bitmask


class Constraint:
    """The grammar state of one request's output.

    Call it as an mlx-lm logits processor: `constraint(tokens, logits)` advances by the
    last sampled token (`tokens[-1]`; not on the first call, where `tokens` is the
    prompt) and returns the logits with every disallowed token at -inf. Or drive it by
    hand with `advance(token_id)` and `allowed()`. `forced()` lists the tokens the
    grammar admits as the only continuation here (fed without sampling).
    """

    def __init__(self, grammar: CompiledGrammar, kind: str, *, parallel_calls: bool = False):
        self.kind = kind
        self.grammar = grammar
        self.parallel_calls = parallel_calls
        self._matcher = grammar.matcher()
        self._eos = frozenset(grammar.info.eos_token_ids)
        self._words = (grammar.info.vocab_size + 31) // 32
        self._started = False
        self._skip = False
        self._ended = False
        self._mask: np.ndarray | None = None  # this position's bitmask, once computed
        # Set when the grammar failed mid-decode (a parser limit): the output then ends at
        # once (only EOS is allowed) and the server answers 400 with this error.
        self.error: GrammarError | None = None

    def __call__(self, tokens, logits):
        try:
            if self._skip:
                self._skip = False
            elif self._started:
                self.advance(int(tokens[-1].item()))
            self._started = True
            return self.apply(logits)
        except GrammarError as exc:
            self.error, self._ended, self._mask = exc, True, None
            return self.apply(logits)

    @property
    def started(self) -> bool:
        return self._started

    def skip_next(self) -> None:
        """The next `__call__` must not advance: its newest token was fed by `advance`."""
        self._skip = True

    def _bitmask(self) -> np.ndarray:
        if self._mask is None:
            words = np.zeros((1, self._words), dtype=np.int32)
            if self._ended or self._matcher.is_stopped():
                self._set(words[0], self._eos)
            else:
                from llguidance.numpy import fill_next_token_bitmask

                fill_next_token_bitmask(self._matcher, words)
                if self._matcher.is_error():
                    raise self._error()
            self._mask = words[0]
        return self._mask

    @staticmethod
    def _set(words: np.ndarray, ids) -> None:
        view = words.view(np.uint32)
        for token_id in ids:
            view[token_id // 32] |= np.uint32(1 << (token_id % 32))

    def _error(self) -> GrammarError:
        message = self._matcher.get_error()
        if limit_hit(message):
            return GrammarError(f"the grammar exceeded the server's parser limits while decoding: {message.splitlines()[0]}")
        return GrammarError(f"the grammar failed while decoding: {message.splitlines()[0] if message else 'unknown error'}")

    def advance(self, token_id: int) -> None:
        """Move past `token_id`; ValueError if the grammar does not allow it here."""
        token_id = int(token_id)
        if token_id in self._eos:
            if not self.eos_allowed:
                raise ValueError(f"EOS (token {token_id}) before the grammar is complete")
            self._ended = True
            self._mask = None
            return
        if self._ended:
            raise ValueError(f"token {token_id} after EOS")
        if self._matcher.validate_tokens([token_id]) != 1:
            raise ValueError(f"token {token_id} is not allowed by the grammar here")
        if not self._matcher.consume_token(token_id):
            raise self._error()
        self._mask = None

    def advance_many(self, token_ids: list[int]) -> None:
        for token_id in token_ids:
            self.advance(token_id)

    def forced(self) -> list[int]:
        """The tokens the grammar forces from here (its only continuation), maybe none."""
        if self._ended or self._matcher.is_stopped():
            return []
        return list(self._matcher.compute_ff_tokens())

    def allowed(self) -> np.ndarray:
        """Boolean mask over the model's vocabulary: which tokens may come next."""
        return _unpack(self._bitmask(), self.grammar.info.vocab_size)

    @property
    def eos_allowed(self) -> bool:
        """The output may end here (the grammar accepts what was generated so far)."""
        return self._ended or self._matcher.is_accepting()

    @property
    def done(self) -> bool:
        """The grammar is complete: EOS is the only token allowed."""
        return self._ended or self._matcher.is_stopped()

    def apply(self, logits):
        """`logits` ((1, V) or (V,), V possibly padded) with disallowed tokens at -inf."""
        import mlx.core as mx

        words = self._bitmask()
        kernel = _metal_kernel()
        if kernel is not None:
            flat = logits.ndim == 1
            out = kernel(logits[None] if flat else logits, words[None])
            return out[0] if flat else out
        width = logits.shape[-1]
        mask = _unpack(words, min(width, words.size * 32))
        if mask.size < width:
            mask = np.concatenate([mask, np.zeros(width - mask.size, dtype=bool)])
        return mx.where(mx.array(mask), logits, float("-inf"))


def _unpack(words: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), bitorder="little", count=count).view(bool)
