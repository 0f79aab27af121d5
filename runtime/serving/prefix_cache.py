"""The runtime's prompt cache: mlx-lm's `LRUPromptCache` with a lookup that stays cheap.

Keyed by model version and token ids, bounded in bytes: a conversation's next turn finds
its last turn's KV cache and prefills only what is new, and a request that shares a prefix
with a cached one (a system prompt, the tools) reuses that prefix.

mlx-lm's lookup, when no cached entry is a prefix of the prompt but some share its first
tokens, searches the whole trie below the point where they diverge for the nearest entry,
copying a token list at every node: with many cached conversations under one shared system
prompt that is quadratic in their length, on the model thread, for every request (20 ms a
request with a few hundred entries, growing). Here the walk down the prompt's own path is
the only search: the deepest cached prefix, else the first entry found below the
divergence point (any of them shares the same prefix), and of that entry only the shared
prefix is copied.
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache, LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

VALUE = "__value__"  # where mlx-lm's PromptTrie keeps an entry in a node


def _prefix_copy(cache: list[Any], size: int, n: int) -> list[Any]:
    """A copy of the first `n` of `size` cached tokens (plain KV caches: only those copied)."""
    if all(type(c) is KVCache and c.keys is not None for c in cache):
        out = []
        for c in cache:
            one = KVCache()
            one.keys = mx.contiguous(c.keys[..., :n, :])
            one.values = mx.contiguous(c.values[..., :n, :])
            one.offset = n
            out.append(one)
        return out
    out = copy.deepcopy(cache)
    trim_prompt_cache(out, size - n)
    return out


class PrefixCache(LRUPromptCache):
    """mlx-lm's prompt cache with a linear-time lookup, entries that hold only what they
    count, and removal by model version."""

    def fetch_nearest_cache(self, model: Any, tokens: list[int]) -> tuple[list[Any] | None, list[int]]:
        """(a copy of the cache for the longest cached prefix of `tokens`, the tokens still
        to prefill); (None, tokens) when nothing is shared."""
        node = self._trie._trie.get(model)
        if node is None or not tokens:
            return None, tokens
        shorter, shorter_node, depth = 0, None, 0
        for tok in tokens:
            nxt = node.get(tok)
            if nxt is None:
                break
            node, depth = nxt, depth + 1
            if VALUE in node:
                shorter, shorter_node = depth, node
        if shorter == len(tokens):
            return copy.deepcopy(node[VALUE].prompt_cache), []
        if depth > shorter:
            # Entries below here share `depth` tokens with the prompt: take the first one
            # down the trie (a node without an entry always has a child).
            below, extra = node, 0
            while VALUE not in below:
                below = next(v for k, v in below.items() if k != VALUE)
                extra += 1
            entry = below[VALUE]
            # At least one token is left to feed: generation starts from it.
            prefix = min(len(tokens) - 1, depth)
            if prefix > shorter and can_trim_prompt_cache(entry.prompt_cache):
                return _prefix_copy(entry.prompt_cache, depth + extra, prefix), tokens[prefix:]
        if shorter_node is not None:
            return copy.deepcopy(shorter_node[VALUE].prompt_cache), tokens[shorter:]
        return None, tokens

    def insert_cache(self, model: Any, tokens: list[int], prompt_cache: list[Any], **kw: Any) -> None:
        # A finished request's cache is a lazy copy of its rows out of the batch's KV
        # buffers: until evaluated it keeps those whole buffers (every row, every layer)
        # alive, several times what its nbytes says, and the byte bound would not bound
        # memory. The copy is queued here, so what is cached is what is counted.
        mx.async_eval([c.state for c in prompt_cache])
        super().insert_cache(model, tokens, prompt_cache, **kw)

    def drop_model(self, model: str) -> None:
        # LRUPromptCache has no removal by model; its trie and LRU lists are walked here.
        for entries in self._lru._lrus.values():
            for m, tokens in [e for e in entries if e[0] == model]:
                entries.remove((m, tokens))
                entry = self._trie.pop(m, tokens)
                self._n_bytes -= entry.nbytes
                self._n_bytes_by_type[entry.cache_type] -= entry.nbytes
