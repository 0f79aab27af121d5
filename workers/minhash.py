"""MinHash signatures and LSH banding over token shingles, vectorised with numpy.

A trajectory is a sequence of token ids; its set of k-token shingles stands for its
content, and two trajectories' Jaccard similarity over those sets is what near-duplicate
detection thresholds. Signatures use one-permutation hashing with optimal densification
(Shrivastava, ICML 2017): each shingle is hashed once, the top bits pick one of
`NUM_PERM` bins and the bin keeps its minimum; empty bins borrow from a bin picked by a
probe sequence shared by every document, which keeps Pr[bins equal] = Jaccard. That is
one hash per shingle instead of `NUM_PERM`, about 20x faster than classic MinHash in
numpy, with the same estimator.

LSH splits the signature into `bands` x `rows`; documents that agree on a whole band are
candidates, and candidates are verified on the full signature.
"""

from __future__ import annotations

import numpy as np

NUM_PERM = 128
SHINGLE = 5
_BIN_BITS = 7  # 2**7 == NUM_PERM
_VALUE_MASK = np.uint64((1 << (64 - _BIN_BITS)) - 1)
EMPTY = np.uint64(np.iinfo(np.uint64).max)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast bijective mix, so nearby inputs scatter."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _weights(k: int) -> np.ndarray:
    # Position-dependent odd weights make a window an ordered k-gram, not a bag of tokens.
    return mix64(np.arange(1, k + 1, dtype=np.uint64) * _GOLDEN) | np.uint64(1)


def shingle_hashes(tokens: np.ndarray, k: int = SHINGLE) -> np.ndarray:
    """64-bit hashes of every window of `k` consecutive tokens (one for a shorter doc)."""
    hashes, _ = _batch_shingles([np.asarray(tokens)], k)
    return hashes


def _batch_shingles(docs: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of all docs at once and how many belong to each doc."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    if lengths.sum() == 0:
        return np.empty(0, dtype=np.uint64), np.zeros(len(docs), dtype=np.int64)
    # Pad every doc to at least k tokens with a marker no real token equals (token ids
    # are non-negative), so a short doc still makes exactly one shingle.
    pad = np.where(lengths > 0, np.maximum(k - lengths, 0), 0)
    flat = np.concatenate([np.concatenate([np.asarray(d, dtype=np.int64), np.full(p, -1, dtype=np.int64)]) for d, p in zip(docs, pad)])
    mixed = mix64(flat.astype(np.uint64))
    # Summed one offset at a time: no (n, k) temporary, so memory stays ~ a few x n.
    width = mixed.size - k + 1
    combined = np.zeros(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j, w in enumerate(_weights(k)):
            combined += mixed[j : j + width] * w
    # Keep windows that start inside a doc and end before the next one begins.
    padded = lengths + pad
    counts = np.maximum(padded - k + 1, 0)
    counts[lengths == 0] = 0
    starts = np.concatenate([[0], np.cumsum(padded)[:-1]])
    take = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return mix64(combined[take]), counts


def _probe_table(rounds: int) -> np.ndarray:
    # probe[t, i]: the bin that empty bin i borrows from on attempt t, the same for
    # every document (that sharing is what keeps the estimator unbiased).
    t = np.arange(rounds, dtype=np.uint64)[:, None]
    i = np.arange(NUM_PERM, dtype=np.uint64)[None, :]
    return (mix64(t * np.uint64(NUM_PERM) + i + _GOLDEN) % np.uint64(NUM_PERM)).astype(np.int64)


_PROBES = _probe_table(4096)


# Tokens hashed per numpy pass: bounds the temporaries (~10 arrays of this many uint64s)
# whatever the batch size.
CHUNK_TOKENS = 1 << 20


def signatures(docs: list[np.ndarray], k: int = SHINGLE) -> np.ndarray:
    """MinHash signatures, shape (len(docs), NUM_PERM), uint64; an empty doc is all EMPTY."""
    sig = np.full((len(docs), NUM_PERM), EMPTY, dtype=np.uint64)
    start = used = 0
    for i, d in enumerate(docs):
        used += len(d)
        if used >= CHUNK_TOKENS or i == len(docs) - 1:
            sig[start : i + 1] = _signatures(docs[start : i + 1], k)
            start, used = i + 1, 0
    return sig


def _signatures(docs: list[np.ndarray], k: int) -> np.ndarray:
    n = len(docs)
    sig = np.full((n, NUM_PERM), EMPTY, dtype=np.uint64)
    allh, counts = _batch_shingles(docs, k)
    if allh.size == 0:
        return sig
    doc = np.repeat(np.arange(n, dtype=np.int64), counts)
    bins = (allh >> np.uint64(64 - _BIN_BITS)).astype(np.int64)
    flat = sig.reshape(-1)
    np.minimum.at(flat, doc * NUM_PERM + bins, allh & _VALUE_MASK)
    _densify(sig, counts > 0)
    return sig


def _densify(sig: np.ndarray, nonempty_docs: np.ndarray) -> None:
    original = sig.copy()
    rows, cols = np.nonzero((original == EMPTY) & nonempty_docs[:, None])
    for t in range(_PROBES.shape[0]):
        if rows.size == 0:
            return
        src = _PROBES[t, cols]
        got = original[rows, src]
        hit = got != EMPTY
        sig[rows[hit], cols[hit]] = got[hit]
        rows, cols = rows[~hit], cols[~hit]
    # Only a doc with one or two shingles can get here; fill from any bin it has, the
    # same way in every doc (lowest non-empty bin), so equal docs still match.
    for r in np.unique(rows):
        present = np.flatnonzero(original[r] != EMPTY)
        sig[r, cols[rows == r]] = original[r, present[0]]


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows): the most rows per band that still flag >= 99% of pairs at `threshold`.

    More rows per band means fewer false candidates; the recall bound keeps true near
    duplicates from slipping through (verification on the full signature drops the rest).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= 0.99:
            best = (bands, rows)
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band, shape (n, bands); equal keys mean an equal band."""
    n = sig.shape[0]
    parts = sig[:, : bands * rows].reshape(n, bands, rows)
    with np.errstate(over="ignore"):
        return mix64((mix64(parts) * _weights(rows)).sum(axis=2, dtype=np.uint64))


def similarity(sig: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of one signature against each row of `others`."""
    if others.size == 0:
        return np.empty(0)
    return (others == sig[None, :]).mean(axis=1)


def jaccard(a: np.ndarray, b: np.ndarray, k: int = SHINGLE) -> float:
    """Exact Jaccard of two token sequences' shingle sets (for tests and reports)."""
    sa, sb = set(shingle_hashes(a, k).tolist()), set(shingle_hashes(b, k).tolist())
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)
