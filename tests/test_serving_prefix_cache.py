"""The runtime's prompt cache lookup against mlx-lm's, on random tries of KV caches."""

from __future__ import annotations

import random

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, LRUPromptCache

from tinygpt.runtime.serving.prefix_cache import PrefixCache

LAYERS, HEADS, DIM = 2, 2, 4


def _cache(tokens: list[int]) -> list[KVCache]:
    """A KV cache whose keys at position i encode tokens[i] (so copies can be checked)."""
    out = []
    for layer in range(LAYERS):
        c = KVCache()
        x = mx.array(tokens, dtype=mx.float32).reshape(1, 1, -1, 1) + layer
        x = mx.broadcast_to(x, (1, HEADS, len(tokens), DIM))
        c.update_and_fetch(x, -x)
        out.append(c)
    return out


def _prompts(rng: random.Random, n: int) -> list[list[int]]:
    shared = [rng.randrange(50) for _ in range(rng.randrange(0, 6))]
    return [shared + [rng.randrange(50) for _ in range(rng.randrange(1, 12))] for _ in range(n)]


@pytest.mark.parametrize("seed", range(30))
def test_lookup_finds_the_same_reusable_prefix_as_mlx_lm_and_copies_only_it(seed):
    rng = random.Random(seed)
    ours, theirs = PrefixCache(max_size=1000), LRUPromptCache(max_size=1000)
    stored = _prompts(rng, rng.randrange(1, 8))
    for tokens in stored:
        ours.insert_cache("m", list(tokens), _cache(tokens))
        theirs.insert_cache("m", list(tokens), _cache(tokens))
    queries = _prompts(rng, 6) + [list(t) for t in stored] + [t + [7, 8] for t in stored] + [t[:-1] for t in stored if len(t) > 1]
    for q in queries:
        got, rest = ours.fetch_nearest_cache("m", q)
        want, want_rest = theirs.fetch_nearest_cache("m", q)
        # The same split between cached and still-to-prefill tokens ...
        assert rest == want_rest, (q, rest, want_rest)
        n = len(q) - len(rest)
        if want is None or n == 0:
            # Nothing reused: no cache (mlx-lm may hand back one trimmed to nothing).
            assert got is None
            continue
        for layer, (g, w) in enumerate(zip(got, want)):
            assert g.offset == w.offset == n
            # ... and the cached keys and values are the prompt's own tokens.
            keys, values = g.keys_and_values() if g.offset < g.keys.shape[2] else (g.keys, g.values)
            assert keys.shape[2] == n
            assert mx.array_equal(keys[0, 0, :, 0], mx.array(q[:n], dtype=mx.float32) + layer)
            assert mx.array_equal(values, -keys)


def test_a_copy_is_independent_of_the_cached_entry():
    cache = PrefixCache(max_size=10)
    cache.insert_cache("m", [1, 2, 3, 4], _cache([1, 2, 3, 4]))
    got, rest = cache.fetch_nearest_cache("m", [1, 2, 9])
    assert rest == [9]
    got[0].update_and_fetch(mx.zeros((1, HEADS, 1, DIM)), mx.zeros((1, HEADS, 1, DIM)))
    again, _ = cache.fetch_nearest_cache("m", [1, 2, 3, 4, 5])
    assert mx.array_equal(again[0].keys[0, 0, :4, 0], mx.array([1.0, 2.0, 3.0, 4.0]))


def test_a_one_token_prompt_under_a_longer_entry_reuses_nothing():
    # The last prompt token is always fed (generation starts from it): nothing to reuse.
    cache = PrefixCache(max_size=10)
    cache.insert_cache("m", [1, 2, 3], _cache([1, 2, 3]))
    assert cache.fetch_nearest_cache("m", [1]) == (None, [1])


def test_nothing_shared_and_other_models_find_nothing():
    cache = PrefixCache(max_size=10)
    cache.insert_cache("m", [1, 2, 3], _cache([1, 2, 3]))
    assert cache.fetch_nearest_cache("m", [5, 6]) == (None, [5, 6])
    assert cache.fetch_nearest_cache("other", [1, 2, 3]) == (None, [1, 2, 3])
