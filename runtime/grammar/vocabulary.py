"""What each token id writes, as bytes: the vocabulary a token-level grammar walks.

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

_CACHE: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
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
    _vocabulary: object = field(default=None, repr=False)
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
    def from_tokenizer(cls, tokenizer, *, vocab_size: int | None = None) -> "TokenizerInfo":
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

    def vocabulary(self):
        """The outlines_core Vocabulary (built once): bytes → ids, EOS excluded."""
        with self._lock:
            if self._vocabulary is None:
                from outlines_core import Vocabulary

                eos = set(self.eos_token_ids)
                by_bytes: dict[bytes, list[int]] = {}
                for token_id, piece in enumerate(self.token_bytes):
                    if piece and token_id not in eos:
                        by_bytes.setdefault(piece, []).append(token_id)
                self._vocabulary = Vocabulary(self.eos_token_ids[0], by_bytes)
            return self._vocabulary


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
    # The primary EOS first: outlines_core's Vocabulary keeps exactly one.
    primary = getattr(hf, "eos_token_id", None)
    if primary in eos:
        eos = (primary,) + tuple(i for i in eos if i != primary)
    return TokenizerInfo(vocab_size=vocab_size, eos_token_ids=eos, token_bytes=tuple(token_bytes), mode=mode)


def _unwrap(tokenizer) -> tuple[object, set[int]]:
    """(transformers tokenizer, EOS ids) from it or from mlx-lm's TokenizerWrapper."""
    eos: set[int] = set()
    try:
        from mlx_lm.tokenizer_utils import TokenizerWrapper
    except ImportError:  # pragma: no cover - mlx-lm is a dependency
        TokenizerWrapper = ()
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
