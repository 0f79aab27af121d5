"""Forward passes and losses over `data.Batch` arrays.

Packed rows must not attend to each other. mlx-lm models build their attention mask with
`create_attention_mask(h, cache)`, which defers to `cache.make_mask` when the cache has
one; `_PackedMask` is a pass-through "cache" that only supplies a block-diagonal causal
mask, so any mlx-lm model trains on packed rows without a fork of its code. RoPE depends
only on relative positions, so a row later in a pack sees exactly what it would alone.

mlx-lm's fused KL kernels (tuner/losses.py) are Metal-only, so the distillation losses
here are plain `mx` ops that run on every backend.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class _PackedMask:
    """A stand-in KV cache: offset 0, keys/values passed through, a given mask."""

    offset = 0

    def __init__(self, mask: mx.array):
        self._mask = mask

    def update_and_fetch(self, keys, values):
        return keys, values

    def make_mask(self, N, return_array=False, window_size=None):
        if window_size is not None:
            idx = mx.arange(N)
            return self._mask & (idx[:, None] < idx[None, :] + window_size)
        return self._mask


def batch_arrays(batch) -> tuple:
    """A `data.Batch` as the (inputs, targets, weights, mask, segments) `mx` arrays losses take."""
    seg = None if batch.segments is None else mx.array(batch.segments)
    return mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.weights), mx.array(batch.mask), seg


def packed_mask(segments: mx.array) -> mx.array:
    """(B, 1, L, L) boolean: causal, and only within the same segment."""
    L = segments.shape[1]
    idx = mx.arange(L)
    causal = idx[:, None] >= idx[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    return mx.expand_dims(same & causal, 1)


def logits(model, inputs: mx.array, segments: mx.array | None) -> mx.array:
    """The model's logits; with `segments`, packed rows are kept apart."""
    if segments is None:
        return model(inputs)
    shim = _PackedMask(packed_mask(segments))
    return model(inputs, cache=[shim] * len(model.layers))


def cross_entropy(model, inputs, targets, weights, mask, segments=None):
    """Mean next-token cross entropy over the masked-in targets; (loss, token count)."""
    out = logits(model, inputs, segments)
    ce = nn.losses.cross_entropy(out, targets) * weights
    ntoks = mask.sum()
    return ce.astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks


def token_logps(model, inputs, targets, segments=None):
    """log p(target) at every position, float32 (B, L)."""
    out = logits(model, inputs, segments)
    return -nn.losses.cross_entropy(out, targets).astype(mx.float32)


def sequence_logps(model, inputs, targets, mask):
    """Per-sequence sum of log p(target) over the masked-in positions (B,)."""
    return (token_logps(model, inputs, targets) * mask).sum(-1)


def _kl(student, teacher, temperature: float, direction: str):
    """Per-position KL between softmax(x / T) distributions; last axis is the vocabulary."""
    log_q = nn.log_softmax(student.astype(mx.float32) / temperature, axis=-1)
    log_p = nn.log_softmax(teacher.astype(mx.float32) / temperature, axis=-1)
    if direction == "forward":  # KL(teacher || student): mass-covering
        return (mx.exp(log_p) * (log_p - log_q)).sum(-1)
    return (mx.exp(log_q) * (log_q - log_p)).sum(-1)  # KL(student || teacher): mode-seeking


def distill_full(model, inputs, targets, weights, mask, segments, teacher_logits, *, temperature, direction, alpha):
    """alpha * T^2 * KL(teacher, student) + (1 - alpha) * CE, on the masked-in positions.

    T^2 keeps the gradient scale independent of the temperature (Hinton et al., 2015).
    """
    out = logits(model, inputs, segments)
    vocab = min(out.shape[-1], teacher_logits.shape[-1])
    kl = _kl(out[..., :vocab], teacher_logits[..., :vocab], temperature, direction)
    loss = alpha * temperature**2 * kl
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * nn.losses.cross_entropy(out, targets)
    ntoks = mask.sum()
    return (loss * weights).astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks


def distill_topk(model, inputs, targets, weights, mask, segments, topk_idx, topk_logits, *, temperature, direction, alpha):
    """KL against the teacher's cached top-k logits.

    The teacher distribution is its softmax renormalized over its k best tokens. Forward
    KL scores the student's full-vocabulary log-probs at those k ids (mass the student
    puts elsewhere is penalized through the normalizer); reverse KL compares the student
    renormalized over the same k ids, as no teacher value exists outside them.
    """
    out = logits(model, inputs, segments)
    student_k = mx.take_along_axis(out, topk_idx, axis=-1).astype(mx.float32) / temperature
    log_p = nn.log_softmax(topk_logits.astype(mx.float32) / temperature, axis=-1)
    if direction == "forward":
        log_q = student_k - mx.logsumexp(out.astype(mx.float32) / temperature, axis=-1, keepdims=True)
        kl = (mx.exp(log_p) * (log_p - log_q)).sum(-1)
    else:
        log_q = nn.log_softmax(student_k, axis=-1)
        kl = (mx.exp(log_q) * (log_q - log_p)).sum(-1)
    loss = alpha * temperature**2 * kl
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * nn.losses.cross_entropy(out, targets)
    ntoks = mask.sum()
    return (loss * weights).astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks
