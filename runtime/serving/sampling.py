"""Per-request samplers and logits processors, built in the model thread.

Each request gets its own PRNG key (its `seed`, or a random one), so a seeded request is
reproducible even while it shares a batch with others: mlx-lm's stock sampler draws from
the process-wide random state, which batching would interleave.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_p, greedy_sampler, make_logits_processors

Sampler = Callable[[mx.array], mx.array]
Processor = Callable[[mx.array, mx.array], mx.array]


class SeededSampler:
    """Temperature + nucleus sampling that splits its own key every step."""

    def __init__(self, temperature: float, top_p: float, seed: int | None):
        self.inv_temp = 1.0 / temperature
        self.top_p = top_p
        seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        # mx.random.key takes a uint64; fold Python ints of any sign into that range.
        self.key = mx.random.key(seed % (1 << 64))

    def __call__(self, logprobs: mx.array) -> mx.array:
        return sample_seeded(logprobs, [self] * logprobs.shape[0])


def sample_seeded(logprobs: mx.array, samplers: Sequence[SeededSampler]) -> mx.array:
    """Row i drawn by samplers[i] with its own key, temperature and top-p, every row in one
    graph; a lone request is the same call with one row, so a seed gives the same tokens
    whether its request decodes alone or in a batch.

    A batch of sampled requests (OpenAI's default temperature is 1) otherwise builds and
    launches a split, a top-p and a draw per row per step: on 2 CPU cores 16 seeded clients
    decoded at 0.35 of the greedy rate (benchmarks/serving_overhead.py --sampled), and a
    GPU's step is launch-bound. The draw is Gumbel-max, argmax(logits / T + Gumbel noise):
    exact categorical sampling whose per-row noise vmaps over the keys, which
    `mx.random.categorical` (an inverse-CDF search) does not.
    """
    split = mx.vmap(mx.random.split)(mx.stack([s.key for s in samplers]))  # [n, 2, 2]
    top_p = [s.top_p if 0.0 < s.top_p < 1.0 else 1.0 for s in samplers]
    if any(p < 1.0 for p in top_p):
        cut = mx.array(top_p, dtype=mx.float32)[:, None]
        logprobs = mx.where(cut < 1.0, apply_top_p(logprobs, cut), logprobs)
    scaled = logprobs * mx.array([s.inv_temp for s in samplers], dtype=mx.float32)[:, None]
    noise = mx.vmap(lambda key: mx.random.gumbel(shape=scaled.shape[1:], key=key))(split[:, 1])
    for i, s in enumerate(samplers):
        s.key = split[i, 0]
    return mx.argmax(scaled + noise, axis=-1)


def make_sampler(temperature: float, top_p: float, seed: int | None) -> Sampler:
    """Greedy (one shared function, so a greedy batch samples in one call) or seeded sampling."""
    if temperature == 0.0 or top_p == 0.0:
        return greedy_sampler
    return SeededSampler(temperature, top_p, seed)


def make_processors(
    prompt_len: int,
    *,
    logit_bias: dict[int, float] | None,
    presence_penalty: float | None,
    frequency_penalty: float | None,
) -> list[Processor]:
    """OpenAI's penalties over the *generated* tokens only, and logit_bias.

    mlx-lm's processors see the whole context (prompt included) and a 20-token window;
    OpenAI penalises what the model said, so the context is cut at the prompt's end.
    """
    processors: list[Processor] = []
    if logit_bias:
        processors.append(LogitBias(logit_bias))
    penalties = make_logits_processors(
        presence_penalty=presence_penalty or None,
        presence_context_size=1 << 30,
        frequency_penalty=frequency_penalty or None,
        frequency_context_size=1 << 30,
    )
    for penalty in penalties:
        processors.append(_generated_only(penalty, prompt_len))
    return processors


class LogitBias:
    """OpenAI's `logit_bias`: an additive bias on some token ids.

    A class (not mlx-lm's closure) so the batched decode step (`batch_step`) can add every
    row's bias with one scatter instead of calling it row by row; called on one row it
    does what mlx-lm's logit-bias processor does.
    """

    def __init__(self, bias: dict[int, float]):
        self.ids = [int(k) for k in bias]
        self.values = [float(v) for v in bias.values()]
        self._ids = mx.array(self.ids)
        self._values = mx.array(self.values)

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        return logits.at[:, self._ids].add(self._values)


def _generated_only(processor: Processor, prompt_len: int) -> Processor:
    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens[prompt_len:]
        return processor(generated, logits) if generated.size else logits

    return apply


class TimedConstraint:
    """Wraps a grammar constraint to time it (the /metrics constrained-decoding time).

    The constraint reads the last sampled token, which waits for the step computing it;
    that wait is taken here, before the clock starts, so the time observed is the
    grammar's own work (advance + mask), not the model's forward pass.
    """

    def __init__(self, constraint, observe: Callable[[float], None]):
        self.constraint = constraint
        self.observe = observe

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        mx.eval(tokens)
        start = time.perf_counter()
        out = self.constraint(tokens, logits)
        self.observe(time.perf_counter() - start)
        return out
