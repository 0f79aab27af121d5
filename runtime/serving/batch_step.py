"""One decode step for the whole batch: mlx-lm's `GenerationBatch` with its per-sequence work
taken out of the step.

mlx-lm 0.32's `GenerationBatch._step` handles logits processors, samplers and logprobs one
sequence at a time as soon as any sequence has a processor or its own sampler: with a
`logit_bias` on every request that is a row slice, a scatter and a concatenate per sequence
per token — hundreds of kernel launches a step at batch 128 on a GPU, where the model call
itself is ~5 ms. This subclass does, per step, for the whole batch:

- one scatter-add for every row's `logit_bias` (`sampling.LogitBias`), the index arrays
  built once per batch composition;
- the per-row loop only for the rows whose processors cannot be batched (penalties, grammar
  constraints), their results written back with one indexed assignment; the forward pass is
  queued before that loop, so a grammar's mask is computed while the device runs the model;
- one sampler call per distinct sampler (all greedy rows share one), and one for every
  seeded row together (`sampling.sample_seeded`), not one per row;
- the chosen tokens' logprobs gathered in the step's own graph, so they are evaluated with
  the tokens (`chosen`, one float per row) instead of by B more ops afterwards;
- logprobs kept as one [B, V] array (rows are sliced only when a caller reads one);
- no attention mask when no row is left-padded (see `_unpadded`);
- the KV cache's left padding read from the device once per batch composition, not once per
  layer per finished sequence: mlx-lm's `BatchKVCache.extract` / `.filter` call `tolist()` on
  it in every layer, and each such read waits for the step in flight (on a GPU: 30 syncs per
  finished request, and the pipelining lost whenever a request ends or is fast-forwarded).

As in mlx-lm, step k+1 is queued (`async_eval`) before step k's tokens are read, so the
caller's per-token Python work overlaps the device's next step. The arithmetic is the same
as mlx-lm's (tests/test_serving_batch_step.py compares tokens and logprobs with the stock
class); `install(gen)` swaps it into a `BatchGenerator`, whose single generation batch every
later prompt batch is merged into (`extend`).
"""

from __future__ import annotations

import time
from typing import Any

import mlx.core as mx
from mlx_lm.generate import GenerationBatch, PromptProcessingBatch
from mlx_lm.models.cache import BatchKVCache, KVCache

from .sampling import LogitBias, SeededSampler, sample_seeded


def _rows(logprobs) -> mx.array | None:
    """A [B, V] array from mlx-lm's list of rows (or our array); None when empty."""
    if logprobs is None:
        return None
    if isinstance(logprobs, mx.array):
        return logprobs
    if not logprobs:
        return None
    return mx.stack(list(logprobs))


class RowLogprobs:
    """A [B, V] logprobs array that reads as a list of rows (what `next()` indexes)."""

    __slots__ = ("array",)

    def __init__(self, array: mx.array | None):
        self.array = array

    def __len__(self) -> int:
        return 0 if self.array is None else self.array.shape[0]

    def __getitem__(self, i: int) -> mx.array:
        return self.array[i]

    def __iter__(self):
        return (self.array[i] for i in range(len(self)))


class BatchedGenerationBatch(GenerationBatch):
    """`GenerationBatch` whose step does per-batch work once per batch (see module doc)."""

    chosen: list[float]
    # The last step's time queueing the next step (async_eval: kernel launches on a GPU; on
    # the CPU backend the compute itself) and blocked on the device for this step's tokens.
    launch_s: float
    wait_s: float
    _next_chosen: mx.array | None
    _bias_key: tuple | None
    _bias: tuple[mx.array, mx.array, mx.array] | None

    def __init__(self, *a: Any, **kw: Any):
        self._pads: list[int] | None = None  # host copy of the cache's left padding
        self._pads_of: mx.array | None = None  # ... of this array (layer 0's)
        self.chosen = []
        self.launch_s = self.wait_s = 0.0
        self._next_chosen = None
        self._bias_key = None
        self._bias = None
        super().__init__(*a, **kw)

    # -------------------------------------------------------------- per-batch helpers

    def _split_processors(self) -> tuple[list[int], list[tuple[int, list]]]:
        """Rows with a batchable LogitBias; (row, other processors) for rows needing a loop."""
        biased, other = [], []
        for e, procs in enumerate(self.logits_processors or ()):
            if not procs:
                continue
            rest = [p for p in procs if not isinstance(p, LogitBias)]
            if len(rest) != len(procs):
                biased.append(e)
            if rest:
                other.append((e, procs))
        return biased, other

    def _bias_arrays(self, biased: list[int]):
        """(rows, cols, values) of every biased row's logit_bias, rebuilt when rows change."""
        # The processor tuples themselves (held, compared by identity), never their ids:
        # a finished request's id can come back for a new one.
        key = tuple((e, self.logits_processors[e]) for e in biased)
        if key != self._bias_key:
            rows, cols, vals = [], [], []
            for e in biased:
                for p in self.logits_processors[e]:
                    if isinstance(p, LogitBias):
                        rows += [e] * len(p.ids)
                        cols += p.ids
                        vals += p.values
            self._bias_key = key
            self._bias = (mx.array(rows, dtype=mx.int32), mx.array(cols, dtype=mx.int32), mx.array(vals))
        return self._bias

    def _process(self, logits: mx.array, inputs: mx.array) -> tuple[mx.array, list]:
        biased, other = self._split_processors()
        token_context = []
        if not other:
            # Only static biases: one scatter-add for the batch, no per-row slices.
            if biased:
                rows, cols, vals = self._bias_arrays(biased)
                logits = logits.at[rows, cols].add(vals.astype(logits.dtype))
            return logits, token_context
        # Those rows read the last token on the host (a grammar advances on it), which waits
        # for the previous step: start this step's forward pass first, so the device runs it
        # while the grammar computes the mask (only the mask and the sampling wait for it).
        mx.async_eval(logits)
        # A row's processors run in their own order (a constraint comes last, after the
        # bias), so a row that needs the loop gets all its processors there.
        loop_rows = {e for e, _ in other}
        plain_biased = [e for e in biased if e not in loop_rows]
        if plain_biased:
            rows, cols, vals = self._bias_arrays(plain_biased)
            logits = logits.at[rows, cols].add(vals.astype(logits.dtype))
        processed = []
        for e, procs in other:
            row = logits[e : e + 1]
            context = self._token_context[e].update_and_fetch(inputs[e : e + 1])
            token_context.append(context)
            for processor in procs:
                row = processor(context, row)
            processed.append(row)
        idx = mx.array([e for e, _ in other], dtype=mx.int32)
        rows = mx.concatenate(processed, axis=0)
        # mlx-lm concatenates the rows, so a processor that returns fp32 on bf16 logits
        # promotes the whole batch; the same here, or the logprobs would round differently.
        logits = logits.astype((mx.zeros((), logits.dtype) + mx.zeros((), rows.dtype)).dtype)
        logits[idx] = rows.astype(logits.dtype)
        return logits, token_context

    def _sample(self, logprobs: mx.array) -> mx.array:
        samplers = [self.fallback_sampler if s is None else s for s in (self.samplers or [None] * len(self.uids))]
        first = samplers[0] if samplers else self.fallback_sampler
        if all(s is first for s in samplers):
            return first(logprobs)
        # Rows sharing a sampler (every greedy row) are one call; every seeded row, each
        # with its own key, temperature and top-p, is one more (sample_seeded).
        groups: dict[int, tuple[Any, list[int]]] = {}
        seeded: list[int] = []
        for e, s in enumerate(samplers):
            if isinstance(s, SeededSampler):
                seeded.append(e)
            else:
                groups.setdefault(id(s), (s, []))[1].append(e)
        if seeded and not groups:
            return sample_seeded(logprobs, [samplers[e] for e in seeded])
        sampled = mx.zeros((logprobs.shape[0],), dtype=mx.uint32)
        for s, rows in groups.values():
            idx = mx.array(rows, dtype=mx.int32)
            sampled[idx] = s(logprobs[idx]).astype(mx.uint32)
        if seeded:
            idx = mx.array(seeded, dtype=mx.int32)
            sampled[idx] = sample_seeded(logprobs[idx], [samplers[e] for e in seeded]).astype(mx.uint32)
        return sampled

    # -------------------------------------------------------------- mlx-lm's interface

    def _step(self):
        self._current_tokens = self._next_tokens
        self._current_logprobs = self._next_logprobs
        current_chosen = self._next_chosen
        inputs = self._current_tokens

        unmasked = self._unpadded()
        for c in unmasked:
            c.make_mask = _no_mask
        try:
            logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        finally:  # a cache that is padded later must build its mask again
            for c in unmasked:
                del c.make_mask
        logits, token_context = self._process(logits, inputs)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        sampled = self._sample(logprobs)
        chosen = mx.take_along_axis(logprobs, sampled.reshape(-1, 1).astype(mx.int32), axis=-1).reshape(-1)

        # Queue step k+1 before reading step k: the device computes while the caller
        # handles this step's tokens.
        self._next_tokens = sampled
        self._next_logprobs = RowLogprobs(logprobs)
        self._next_chosen = chosen
        t = time.perf_counter()
        mx.async_eval(sampled, logprobs, chosen, token_context)
        self.launch_s = time.perf_counter() - t

        if current_chosen is None:  # the first step of a fresh batch
            current_chosen = self._chosen_of(self._current_logprobs, inputs)
        t = time.perf_counter()
        mx.eval(inputs, current_chosen)
        self.wait_s = time.perf_counter() - t
        tokens = inputs.tolist()
        self.chosen = current_chosen.tolist()
        for sti, ti in zip(self.tokens, tokens):
            sti.append(ti)
        return tokens, self._current_logprobs

    @staticmethod
    def _chosen_of(logprobs, tokens: mx.array) -> mx.array:
        rows = _rows(logprobs)
        if rows is None:
            return mx.zeros((0,))
        return mx.take_along_axis(rows, tokens.reshape(-1, 1).astype(mx.int32), axis=-1).reshape(-1)

    # -------------------------------------------------------------- KV cache, no per-layer sync

    def _batch_kv(self) -> bool:
        return bool(self.prompt_cache) and all(type(c) is BatchKVCache for c in self.prompt_cache)

    def _unpadded(self) -> list:
        """The caches, when no row is left-padded (a lone sequence; rows of one length),
        else []: a one-token step then needs no mask. BatchKVCache builds one every step
        anyway, and MLX's CUDA backend has no fused attention kernel for a one-token query
        with a mask array: every layer falls back to matmul, mask, softmax, matmul. On an
        H100 that took a batch-1 step from 1.04 to 0.69 of the bare loop's speed
        (benchmarks/gpu_step_ablation.py). The padding is known on the host after a filter;
        after a join it is read only for a lone sequence (one sync as it starts), never for
        a batch that is decoding."""
        if not self._batch_kv():
            return []
        pads = self._pads if self._pads_of is self.prompt_cache[0].left_padding else None
        if pads is None and len(self.uids) == 1:
            pads = self._left_pads()
        return self.prompt_cache if pads is not None and not any(pads) else []

    def _left_pads(self) -> list[int]:
        """Every layer's left padding (the same in each), read once per composition."""
        first = self.prompt_cache[0].left_padding
        if self._pads is None or self._pads_of is not first:
            self._pads, self._pads_of = first.tolist(), first
        return self._pads

    def extract_cache(self, idx: int) -> list:
        if not self._batch_kv():
            return super().extract_cache(idx)
        pad = self._left_pads()[idx]
        out = []
        for c in self.prompt_cache:  # BatchKVCache.extract minus its tolist()
            one = KVCache()
            one.keys = mx.contiguous(c.keys[idx : idx + 1, :, pad : c._idx])
            one.values = mx.contiguous(c.values[idx : idx + 1, :, pad : c._idx])
            one.offset = one.keys.shape[2]
            out.append(one)
        return out

    def _filter_cache(self, keep: list[int]) -> None:
        self._pads = _filter_batch_kv(self.prompt_cache, keep, self._left_pads())
        self._pads_of = self.prompt_cache[0].left_padding

    def extend(self, batch):
        """mlx-lm's `extend`, with logprobs as one array and the chosen logprobs carried."""
        self._pads = None
        self.uids.extend(batch.uids)
        from mlx_lm.generate import _extend_cache

        self.prompt_cache = _extend_cache(self.prompt_cache, batch.prompt_cache)
        self.tokens.extend(batch.tokens)
        self.samplers.extend(batch.samplers)
        self.logits_processors.extend(batch.logits_processors)
        self.max_tokens.extend(batch.max_tokens)
        self.stop_sequences.extend(batch.stop_sequences)
        self._current_tokens = _cat(self._current_tokens, batch._current_tokens)
        self._current_logprobs = RowLogprobs(_cat(_rows(self._current_logprobs), _rows(batch._current_logprobs)))
        other_chosen = getattr(batch, "_next_chosen", None)
        if other_chosen is None and batch._next_tokens is not None:
            other_chosen = self._chosen_of(batch._next_logprobs, batch._next_tokens)
        mine = self._next_chosen
        if mine is None and self._next_tokens is not None and len(self._next_tokens):
            mine = self._chosen_of(self._next_logprobs, self._next_tokens)
        self._next_chosen = _cat(mine, other_chosen)
        self._next_tokens = _cat(self._next_tokens, batch._next_tokens)
        self._next_logprobs = RowLogprobs(_cat(_rows(self._next_logprobs), _rows(batch._next_logprobs)))
        self._token_context.extend(batch._token_context)
        self._num_tokens.extend(batch._num_tokens)
        self._matchers.extend(batch._matchers)

    def filter(self, keep: list[int]):
        idx = mx.array(keep, dtype=mx.int32) if keep else None
        rows = _rows(self._next_logprobs)
        chosen = self._next_chosen
        # mlx-lm's filter indexes _next_logprobs as a list; hand it one.
        self._next_logprobs = [None] * len(self.uids)
        caches = self.prompt_cache
        fast = bool(keep) and self._batch_kv()
        if fast:
            self._filter_cache(keep)
            self.prompt_cache = []  # filtered already: mlx-lm's filter loops over none
        super().filter(keep)
        if fast:
            self.prompt_cache = caches
        self._next_logprobs = RowLogprobs(rows[idx] if idx is not None and rows is not None else None)
        self._next_chosen = chosen[idx] if idx is not None and chosen is not None else None


def _filter_batch_kv(caches: list, keep: list[int], pads: list[int]) -> list[int]:
    """`BatchKVCache.filter` on every layer, the padding shift computed on the host from
    `pads` (the left padding, the same in every layer), not read from the device in each
    layer as mlx-lm does (30 syncs, each waiting for the step in flight). Keeping every
    row with none padded in common changes nothing, so nothing is copied. Returns the
    kept rows' padding."""
    kept = [pads[i] for i in keep]
    shift = min(kept)
    if keep == list(range(len(pads))) and shift == 0:
        return kept
    for c in caches:
        if c.keys is not None:
            c.keys = c.keys[keep]
            c.values = c.values[keep]
        c.offset = c.offset[keep]
        c.left_padding = c.left_padding[keep]
        if shift > 0:  # drop the columns every row pads
            if c.keys is not None:
                c.keys = c.keys[..., shift:, :]
                c.values = c.values[..., shift:, :]
            c._idx -= shift
            c.left_padding = c.left_padding - shift
    return [p - shift for p in kept]


def _no_mask(*_a: Any, **_kw: Any) -> None:
    return None


def _cat(a: mx.array | None, b: mx.array | None) -> mx.array | None:
    if a is None or (isinstance(a, mx.array) and a.size == 0 and b is not None):
        return b
    if b is None or b.size == 0:
        return a
    return mx.concatenate([a, b])


class BatchedPromptBatch(PromptProcessingBatch):
    """mlx-lm's prompt batch, handing its prefilled rows over as a `BatchedGenerationBatch`.

    The stock hand-over builds a stock `GenerationBatch`, whose first step runs every row's
    processors one by one and then waits for the prefill to finish (`mx.eval`): a drained
    pipeline each time prompts join (60 ms for 32 rows on an H100, profile_serving.py). Here
    the first step is the batched one, queued like every other step.
    """

    def filter(self, keep: list[int]):
        # mlx-lm's filter, the KV cache filtered with one padding read for all layers
        # (split() calls it on both halves each time prompts finish prefilling).
        caches = self.prompt_cache
        fast = bool(keep) and bool(caches) and all(type(c) is BatchKVCache for c in caches)
        if fast:
            _filter_batch_kv(caches, keep, caches[0].left_padding.tolist())
            self.prompt_cache = []  # filtered already: mlx-lm's filter loops over none
        super().filter(keep)
        if fast:
            self.prompt_cache = caches

    def generate(self, tokens: list[list[int]]) -> BatchedGenerationBatch:
        # mlx-lm's `generate` with the class swapped.
        if any(len(t) > 1 for t in tokens):
            self.prompt([t[:-1] for t in tokens])
        generation = BatchedGenerationBatch(
            self.model, self.uids, mx.array([t[-1] for t in tokens]), self.prompt_cache, self.tokens, self.samplers,
            self.fallback_sampler, self.logits_processors, self.stop_sequences, self.max_tokens,
        )
        self.uids, self.prompt_cache, self.tokens = [], [], []
        self.samplers, self.logits_processors, self.max_tokens = [], [], []
        return generation


def install(gen) -> None:
    """Make `gen` (an empty mlx-lm BatchGenerator) step with `BatchedGenerationBatch`, from
    the first step of every joining prompt batch on."""
    current, prompts = gen._generation_batch, gen._prompt_batch
    if len(current) or len(prompts) or gen._unprocessed_sequences:
        raise RuntimeError("install() needs a BatchGenerator with no sequences yet")
    gen._generation_batch = BatchedGenerationBatch.empty(current.model, current.fallback_sampler)
    gen._prompt_batch = BatchedPromptBatch.empty(prompts.model, prompts.fallback_sampler, prompts.prefill_step_size)
