"""What each token id writes, as bytes, and the llguidance tokenizer built from it.

Byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen) store tokens in a printable
stand-in alphabet ("Ġ" for a space); SentencePiece tokenizers use "▁" for a space and
"<0xAB>" byte tokens. A grammar must see the real bytes, or "Ġ{" would never match
" {". Special tokens are never allowed by a grammar, except EOS where the grammar ends.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from dataclasses import dataclass, field

_CACHE: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {ch: b for b, ch in bytes_to_unicode().items()}


@dataclass(eq=False)
class TokenizerInfo:
    """A tokenizer as the grammar sees it. Build with `TokenizerInfo.from_tokenizer`.

    `vocab_size` is the length of the model's logits (it may exceed the tokenizer's ids;
    the padding ids are never allowed). `token_bytes[i]` is what token i writes, or None
    when a grammar never allows it (special tokens, padding). `digest` identifies all of
    it, for keying compiled grammars.
    """

    vocab_size: int
    eos_token_ids: tuple[int, ...]
    token_bytes: tuple[bytes | None, ...]
    mode: str
    digest: str = ""
    source: object = field(default=None, repr=False, compare=False)  # the transformers tokenizer
    _ll: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        if not self.eos_token_ids:
            raise ValueError("the tokenizer has no EOS token; a grammar needs one to end on")
        if len(self.token_bytes) != self.vocab_size:
            raise ValueError("token_bytes must have one entry per id below vocab_size")
        if not self.digest:
            h = hashlib.sha256(f"{self.mode}|{self.vocab_size}|{self.eos_token_ids}".encode())
            for piece in self.token_bytes:
                h.update(b"\xff" if piece is None else len(piece).to_bytes(4, "little") + piece)
            self.digest = h.hexdigest()

    @classmethod
    def from_tokenizer(cls, tokenizer, *, vocab_size: int | None = None) -> TokenizerInfo:
        """The info for a transformers tokenizer or an mlx-lm TokenizerWrapper (cached).

        `vocab_size` is the model's logits width (config vocab_size); it defaults to
        the tokenizer's size. Raises ValueError for tokenizers whose token bytes cannot
        be recovered (neither byte-level BPE nor SentencePiece with byte fallback).
        """
        key = vocab_size
        with _CACHE_LOCK:
            try:
                cached = _CACHE.get(tokenizer, {}).get(key)
            except TypeError:  # not weak-referenceable: no caching
                cached = None
        if cached is not None:
            return cached
        info = _build(tokenizer, vocab_size)
        with _CACHE_LOCK:
            try:
                _CACHE.setdefault(tokenizer, {})[key] = info
            except TypeError:
                pass
        return info

    def ll_tokenizer(self):
        """The llguidance LLTokenizer over these ids (built once, ~0.5 s at 49k tokens).

        From the transformers tokenizer when there is one (llguidance then tokenizes
        forced text canonically, with the real tokenizer); else from the byte table.
        """
        with self._lock:
            if self._ll is None:
                self._ll = self._build_ll()
            return self._ll

    def _build_ll(self):
        import llguidance

        eos = list(self.eos_token_ids)
        if self.source is not None:
            import llguidance.hf

            try:
                return llguidance.hf.from_tokenizer(self.source, n_vocab=self.vocab_size, eos_token=eos)
            except (ValueError, RuntimeError):
                pass  # e.g. logits narrower than the tokenizer: the byte table still works
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTable(self)), n_vocab=self.vocab_size, eos_token=eos)


class _ByteTable:
    """The byte table as llguidance's TokenizerWrapper wants a tokenizer: tokens and an
    encoder (greedy longest match, enough for the forced-text tokenization it asks for)."""

    def __init__(self, info: TokenizerInfo):
        self.eos_token_id = info.eos_token_ids[0]
        self.bos_token_id = None
        self.special_token_ids = [i for i, b in enumerate(info.token_bytes) if b is None]
        self.tokens = [b if b is not None else f"<|special_{i}|>".encode() for i, b in enumerate(info.token_bytes)]
        self._ids = {b: i for i, b in reversed(list(enumerate(info.token_bytes))) if b}
        self._longest = max((len(b) for b in self._ids), default=1)

    def __call__(self, text) -> list[int]:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        out, i = [], 0
        while i < len(data):
            for n in range(min(self._longest, len(data) - i), 0, -1):
                token = self._ids.get(data[i : i + n])
                if token is not None:
                    out.append(token)
                    i += n
                    break
            else:
                raise ValueError(f"byte {data[i]:#x} has no token")
        return out


def _build(tokenizer, vocab_size: int | None) -> TokenizerInfo:
    hf, eos_ids = _unwrap(tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(hf).__name__} is not a fast (tokenizers-backed) tokenizer")
    mode = _mode(backend)
    added = backend.get_added_tokens_decoder()
    size = max(backend.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1)
    vocab_size = size if vocab_size is None else int(vocab_size)
    token_bytes: list[bytes | None] = [None] * vocab_size
    for token, token_id in backend.get_vocab(with_added_tokens=True).items():
        if token_id >= vocab_size:
            continue
        if token_id in added:
            special = added[token_id]
            # Non-special added tokens are written as plain text.
            token_bytes[token_id] = None if special.special else special.content.encode("utf-8")
        else:
            token_bytes[token_id] = _decode(token, mode)
    eos = tuple(sorted(i for i in eos_ids if 0 <= i < vocab_size))
    # The primary EOS first: the one a tokenizer wrapper names.
    primary = getattr(hf, "eos_token_id", None)
    if primary in eos:
        eos = (primary,) + tuple(i for i in eos if i != primary)
    return TokenizerInfo(vocab_size=vocab_size, eos_token_ids=eos, token_bytes=tuple(token_bytes), mode=mode, source=hf)


def _unwrap(tokenizer) -> tuple[object, set[int]]:
    """(transformers tokenizer, EOS ids) from it or from mlx-lm's TokenizerWrapper."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    eos: set[int] = set()
    if isinstance(tokenizer, TokenizerWrapper):
        eos |= set(tokenizer.eos_token_ids or ())
        tokenizer = tokenizer._tokenizer
    if getattr(tokenizer, "eos_token_id", None) is not None:
        eos.add(tokenizer.eos_token_id)
    return tokenizer, eos


def _mode(backend) -> str:
    """How the tokenizer's token strings map to bytes, from its decoder."""
    decoder = backend.decoder
    spec = json.loads(decoder.__getstate__()) if decoder is not None else {}
    kinds = {spec.get("type")} | {d.get("type") for d in spec.get("decoders", [])}
    if "ByteLevel" in kinds:
        return "byte_level"
    if "ByteFallback" in kinds or "Metaspace" in kinds:
        return "sentencepiece"
    raise ValueError(
        f"cannot constrain a tokenizer with decoder {sorted(k for k in kinds if k)}: only byte-level BPE "
        "and SentencePiece (byte fallback) vocabularies are supported"
    )


def _decode(token: str, mode: str) -> bytes | None:
    if mode == "byte_level":
        try:
            return bytes(_UNICODE_TO_BYTE[ch] for ch in token)
        except KeyError:
            return None  # not in the byte alphabet: the grammar never offers it
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode("utf-8")
