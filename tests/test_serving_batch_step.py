"""The batched decode step (runtime/serving/batch_step.py) computes what mlx-lm's stock
`GenerationBatch` computes: the same tokens and logprobs for every sequence, with requests
joining and finishing mid-batch, logit biases, a per-row processor and mixed samplers."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.generate import BatchGenerator

from tinygpt.runtime.serving import batch_step
from tinygpt.runtime.serving.sampling import LogitBias, make_processors, make_sampler, sample_seeded


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = mlx_lm.load(str(tiny_model_dir))
    return model, tokenizer


def _penalty_row_processor(tokens: mx.array, logits: mx.array) -> mx.array:
    """A processor the batched step cannot fold into its scatter (it runs in the row loop)."""
    return logits - 0.5 * (mx.arange(logits.shape[-1]) % 3 == 0)


def _requests(tok):
    eos = tok.eos_token_ids
    ban = {t: -100.0 for t in eos}
    prompts = [tok.encode(f"request {i}: tell me about the weather in town number {i}") for i in range(6)]
    # (prompt, max_tokens, sampler, processors)
    return [
        (prompts[0], 9, make_sampler(0.0, 1.0, None), []),
        (prompts[1], 14, make_sampler(0.0, 1.0, None), [LogitBias(ban)]),
        # Two seeded rows (one without top-p) among greedy ones: one sample_seeded call.
        (prompts[2], 5, make_sampler(0.5, 1.0, 99), [LogitBias({**ban, 7: 3.0, 11: -2.0})]),
        (prompts[3], 12, make_sampler(0.8, 0.9, 1234), [LogitBias(ban)]),
        (prompts[4], 11, make_sampler(0.0, 1.0, None), [LogitBias(ban), _penalty_row_processor]),
        (prompts[5], 7, make_sampler(0.0, 1.0, None), make_processors(3, logit_bias=None, presence_penalty=0.7,
                                                                      frequency_penalty=None)),
    ]


def _run(model, tok, *, batched: bool) -> tuple[dict[int, tuple[list[int], list[float]]], dict[int, list]]:
    """Decode the requests, three joining later, with `batched` or the stock step: each
    request's (tokens, logprobs) and its finished KV cache."""
    gen = BatchGenerator(model, stop_tokens=[[t] for t in tok.eos_token_ids], completion_batch_size=8,
                         prefill_batch_size=2)
    if batched:
        batch_step.install(gen)
    reqs = _requests(tok)
    out: dict[int, tuple[list[int], list[float]]] = {}
    order: dict[int, int] = {}
    caches: dict[int, list] = {}

    def insert(items):
        for idx, (prompt, n, sampler, procs) in items:
            (uid,) = gen.insert([prompt], max_tokens=[n], samplers=[sampler], logits_processors=[procs])
            order[uid] = idx
            out[idx] = ([], [])

    insert(list(enumerate(reqs))[:3])
    steps = 0
    while True:
        _, responses = gen.next()
        if responses:
            steps += 1
            chosen = gen._generation_batch.chosen if batched else [r.logprobs[r.token].item() for r in responses]
            assert len(chosen) == len(responses)
            for r, lp in zip(responses, chosen):
                ids, lps = out[order[r.uid]]
                ids.append(r.token)
                lps.append(lp)
                if r.finish_reason is not None:
                    # The finished row's KV cache (what the prefix cache keeps), cut out of
                    # the batch without mlx-lm's per-layer padding reads: the same arrays.
                    caches[order[r.uid]] = [(c.offset, c.keys.tolist(), c.values.tolist()) for c in r.prompt_cache]
                # The row the response carries is the full distribution the token came from.
                assert math.isclose(r.logprobs[r.token].item(), lp, rel_tol=1e-5, abs_tol=1e-5)
            if steps == 3:
                insert(list(enumerate(reqs))[3:])
        elif steps and not len(gen._generation_batch) and not gen._unprocessed_sequences and not gen._currently_processing:
            break
        if steps > 200:
            raise AssertionError("decoding did not finish")
    gen.close()
    return out, caches


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_step_matches_mlx_lm_tokens_and_logprobs(tiny_model_dir, dtype):
    # bf16 as on a GPU: a processor returning fp32 promotes mlx-lm's whole batch, and the
    # batched step must round the same way (seen on an H200 before it did).
    model, tok = mlx_lm.load(str(tiny_model_dir))
    model.set_dtype(getattr(mx, dtype))
    stock, stock_caches = _run(model, tok, batched=False)
    fast, fast_caches = _run(model, tok, batched=True)
    assert stock.keys() == fast.keys() == set(range(6))
    assert stock_caches.keys() == fast_caches.keys() == set(range(6))
    for idx in stock_caches:
        assert fast_caches[idx] == stock_caches[idx], f"request {idx}: extracted KV cache differs"
    for idx in stock:
        assert fast[idx][0] == stock[idx][0], f"request {idx}: tokens differ"
        assert fast[idx][1] == pytest.approx(stock[idx][1], abs=1e-6), f"request {idx}: logprobs differ"
    # The max_tokens of each request were honoured (nothing banned EOS for request 0 and 5,
    # so they may stop earlier).
    for idx, (_, n, _, _) in enumerate(_requests(tok)):
        assert 1 <= len(fast[idx][0]) <= n


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_seeded_rows_sample_in_one_graph_as_each_row_alone(dtype):
    settings = [(0.8, 0.9, 1), (1.0, 1.0, 2), (0.3, 0.5, 3), (1.5, 0.99, -4), (0.7, 1.0, 5), (1.0, 0.2, 1 << 70)]
    logits = (3 * mx.random.normal((len(settings), 300), key=mx.random.key(0))).astype(getattr(mx, dtype))
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    together = [make_sampler(*a) for a in settings]
    alone = [make_sampler(*a) for a in settings]
    draws = set()
    for _ in range(4):  # the keys advance the same way too
        batched = sample_seeded(logprobs, together).tolist()
        assert batched == [alone[i](logprobs[i : i + 1]).item() for i in range(len(settings))]
        draws.add(tuple(batched))
    assert len(draws) > 1  # sampled, not a fixed choice
    for a, b in zip(together, alone):
        assert a.key.tolist() == b.key.tolist()


def test_seeded_rows_draw_from_the_tempered_nucleus():
    n = 4000
    logits = mx.broadcast_to(mx.array([0.0, 1.0, 2.0, -1.0]), (n, 4))
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.8)):
        p = mx.softmax(logits[0] / temperature).tolist()
        if top_p < 1.0:  # the nucleus: the most likely tokens holding top_p of the mass
            order = sorted(range(4), key=lambda t: -p[t])
            keep, mass = [], 0.0
            for t in order:
                keep.append(t)
                mass += p[t]
                if mass >= top_p:
                    break
            p = [p[t] / mass if t in keep else 0.0 for t in range(4)]
        tokens = sample_seeded(logprobs, [make_sampler(temperature, top_p, seed) for seed in range(n)]).tolist()
        for t in range(4):
            # 4 standard deviations of a binomial count: fails on a wrong distribution.
            sd = math.sqrt(n * p[t] * (1 - p[t])) or 0.5
            assert abs(tokens.count(t) - n * p[t]) <= 4 * sd, (temperature, top_p, t, tokens.count(t), n * p[t])


def test_the_stock_per_row_step_never_runs_once_installed(tiny_model_dir, monkeypatch):
    # mlx-lm hands prefilled prompts over as a stock GenerationBatch, whose first step
    # runs each row's processors one by one and waits for the prefill (a drained pipeline
    # whenever prompts join): an installed generator takes its own batch class there too.
    from mlx_lm.generate import GenerationBatch

    def stock_step(self):
        raise AssertionError(f"the stock per-row step ran on a {type(self).__name__}")

    monkeypatch.setattr(GenerationBatch, "_step", stock_step)
    model, tok = mlx_lm.load(str(tiny_model_dir))
    fast, _ = _run(model, tok, batched=True)
    assert fast.keys() == set(range(6))


def test_no_per_layer_padding_reads_once_installed(tiny_model_dir, monkeypatch):
    # mlx-lm's BatchKVCache.filter reads the left padding from the device in every layer
    # (a sync each, waiting for the step in flight); prompt batches split when prompts
    # finish prefilling, generation batches filter when requests finish. Installed, neither
    # calls it, and the decode is the stock one (test above).
    from mlx_lm.models.cache import BatchKVCache

    def stock_filter(self, batch_indices):
        raise AssertionError("BatchKVCache.filter ran (a device read per layer)")

    monkeypatch.setattr(BatchKVCache, "filter", stock_filter)
    model, tok = mlx_lm.load(str(tiny_model_dir))
    fast, _ = _run(model, tok, batched=True)
    assert fast.keys() == set(range(6))


def test_logit_bias_on_a_row_equals_mlx_lm_processor(tiny):
    from mlx_lm.sample_utils import make_logits_processors

    logits = mx.random.normal((1, 50), key=mx.random.key(3))
    bias = {3: 2.5, 17: -100.0}
    (reference,) = make_logits_processors(logit_bias=bias)
    assert mx.allclose(LogitBias(bias)(mx.array([]), logits), reference(mx.array([]), logits)).item()


def test_install_refuses_a_generator_already_decoding(tiny):
    model, tok = tiny
    gen = BatchGenerator(model, stop_tokens=[[t] for t in tok.eos_token_ids])
    gen.insert([tok.encode("hello there")], max_tokens=[4])
    while not len(gen._generation_batch):
        gen.next()
    with pytest.raises(RuntimeError, match="no sequences"):
        batch_step.install(gen)
    gen.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unpadded_steps_skip_the_mask_and_decode_the_same(tiny_model_dir, dtype, monkeypatch):
    # With no row left-padded (a lone sequence; the last row of a shrinking batch), a
    # one-token step needs no attention mask; mlx-lm's batch cache builds one anyway.
    # Skipping it must not change a token or a logprob.
    skipped = []

    def counting_no_mask(*a, **kw):
        skipped.append(1)

    monkeypatch.setattr(batch_step, "_no_mask", counting_no_mask)
    model, tok = mlx_lm.load(str(tiny_model_dir))
    model.set_dtype(getattr(mx, dtype))
    prompt = tok.encode("a lone request about the weather in town")

    def lone(batched: bool) -> tuple[list[int], list[float]]:
        gen = BatchGenerator(model, stop_tokens=[], completion_batch_size=4, prefill_batch_size=2)
        if batched:
            batch_step.install(gen)
        gen.insert([prompt], max_tokens=[12], samplers=[make_sampler(0.0, 1.0, None)],
                   logits_processors=[[LogitBias({7: -5.0})]])
        ids, lps = [], []
        while len(ids) < 12:
            _, responses = gen.next()
            for r in responses:
                ids.append(r.token)
                lps.append(r.logprobs[r.token].item())
        gen.close()
        return ids, lps

    stock = lone(False)
    fast = lone(True)
    assert fast[0] == stock[0]
    assert fast[1] == pytest.approx(stock[1], abs=1e-6)
    assert len(skipped) >= 11  # every decode step after the first (the model asks once a step)
    skipped.clear()
    _run(model, tok, batched=True)  # rows of different lengths: masked until one row is left
    assert skipped, "the last row of a shrinking batch should decode without a mask"
