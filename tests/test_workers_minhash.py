"""MinHash (one-permutation hashing + densification) and LSH banding (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from tinygpt.workers import minhash as mh


def _pair(rng, n: int, changed: float):
    a = rng.integers(0, 49152, size=n)
    b = a.copy()
    k = int(n * changed)
    idx = rng.choice(n, size=k, replace=False)
    b[idx] = rng.integers(0, 49152, size=k)
    return a, b


def test_estimate_tracks_exact_jaccard_without_bias():
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(150):
        a, b = _pair(rng, int(rng.integers(50, 600)), float(rng.uniform(0, 0.4)))
        sig = mh.signatures([a, b])
        errors.append(mh.similarity(sig[0], sig[1:])[0] - mh.jaccard(a, b))
    errors = np.array(errors)
    # 128 bins: the standard error of the estimate is about sqrt(J(1-J)/128) <= 0.045.
    assert abs(errors.mean()) < 0.01
    assert errors.std() < 0.05


def test_identical_docs_match_exactly_and_disjoint_docs_do_not():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 49152, size=300)
    c = rng.integers(0, 49152, size=300)
    sig = mh.signatures([a, a.copy(), c])
    assert mh.similarity(sig[0], sig[1:]).tolist()[0] == 1.0
    assert mh.similarity(sig[0], sig[2:])[0] < 0.1


def test_order_of_tokens_matters():
    a = np.arange(100)
    assert mh.jaccard(a, a[::-1]) < 0.05


def test_batch_equals_one_by_one_and_handles_tiny_and_empty_docs():
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 1000, size=int(n)) for n in rng.integers(0, 40, size=30)] + [np.array([5]), np.array([], dtype=np.int64)]
    batch = mh.signatures(docs)
    for i, d in enumerate(docs):
        assert (mh.signatures([d])[0] == batch[i]).all()
    assert (batch[-1] == mh.EMPTY).all()
    assert (batch[-2] != mh.EMPTY).all()  # densified from its single shingle


@pytest.mark.parametrize("threshold", [0.6, 0.8, 0.9, 0.95])
def test_lsh_params_flag_pairs_at_the_threshold(threshold):
    bands, rows = mh.lsh_params(threshold)
    assert bands * rows <= mh.NUM_PERM
    assert 1 - (1 - threshold**rows) ** bands >= 0.99


def test_near_duplicates_share_a_band_and_strangers_do_not():
    rng = np.random.default_rng(3)
    a, b = _pair(rng, 800, 0.01)
    c = rng.integers(0, 49152, size=800)
    sig = mh.signatures([a, b, c])
    keys = mh.band_keys(sig, *mh.lsh_params(0.9))
    assert (keys[0] == keys[1]).any()
    assert not (keys[0] == keys[2]).any()


def test_chunked_hashing_gives_the_same_signatures(monkeypatch):
    rng = np.random.default_rng(4)
    docs = [rng.integers(0, 49152, size=int(n)) for n in rng.integers(0, 300, size=200)]
    whole = mh.signatures(docs)
    monkeypatch.setattr(mh, "CHUNK_TOKENS", 500)
    assert (mh.signatures(docs) == whole).all()
