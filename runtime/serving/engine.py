"""The model thread: the only code that touches MLX arrays in the runtime.

HTTP threads hand in a `GenRequest` (plain Python: prompt ids, sampling settings, an
event queue) and read `Started` / `Delta` / `Done` / `Failed` events back; nothing they
see holds an `mx.array`. The thread runs one mlx-lm `BatchGenerator` per served model
version (base or a specialist's adapter) and steps them in turn, so requests for the
same specialist decode as one batch (continuous batching: a new request joins the
running batch) while other specialists keep decoding in between.

Admission is bounded: at most `max_batch` sequences decode, at most `max_queue` wait,
and `submit` refuses beyond that (the HTTP layer answers 503 + Retry-After). Prompts
go through the prefix cache (`prefix_cache.py`, mlx-lm's `LRUPromptCache`), keyed by model version and token ids and bounded
in bytes, so a conversation's next turn only prefills what is new.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from collections.abc import Callable

import mlx.core as mx
import msgspec
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

from .. import device
from ..contracts.trajectory import Timings
from ..device import DeviceInfo
from .adapters import BASE, ServedAdapters
from . import batch_step
from .assembler import Assembler
from .events import Delta, Done, Failed, GenRequest, Started, TopLogprobs
from .metrics import Metrics
from .prefix_cache import PrefixCache
from .protocol import ApiError
from .sampling import TimedConstraint, make_processors, make_sampler

log = logging.getLogger("tinygpt.serving")
FAST_FORWARD_MIN = 3
# A streaming client gets its text at most every n_active x STREAM_SECONDS_PER_ACTIVE seconds
# (capped at STREAM_INTERVAL_MAX; the first piece at once): each Delta wakes the client's HTTP
# thread, which then competes with this thread for the GIL, so with 128 streams every token
# of every stream costs the model thread more than the token itself. One stream: every token
# (0.2 ms); 128: ~26 ms, ~40 updates a second.
STREAM_SECONDS_PER_ACTIVE = 0.0002
STREAM_INTERVAL_MAX = 0.05

# (max_batch, max_queue, prefill batch) per backend when the config leaves them unset.
# 2 CPU cores saturate near batch 16; an H100 still gains up to batch 128 and beyond (the
# bare loop: 1,467 tok/s at batch 8, 24,041 at 128), so a GPU takes 256 at once and queues
# 1,024 more before answering 503.
DEFAULT_LIMITS = {"cpu": (16, 64, 8), "gpu": (256, 1024, 32)}

class ExactBPEDetokenizer(BPEStreamingDetokenizer):
    """mlx-lm's byte-level BPE detokenizer minus its first-token space trim.

    Trimming suits a fresh prompt, but an assistant turn is a continuation: the text
    returned must be exactly decode(sampled ids), or the next turn cannot reuse them.
    """

    def _maybe_trim_space(self, current_text: str) -> str:
        return current_text


class _Seq:
    """A request the model thread is decoding."""

    def __init__(self, req: GenRequest, uid: int, detokenizer, cached: int, admitted: float, sampler=None, processors=()):
        self.req = req
        self.uid = uid
        # Kept to re-insert the sequence after feeding forced tokens (fast-forward).
        self.sampler = sampler
        self.processors = processors
        self.forced: list[int] = []  # indices into output_ids of tokens the grammar forced
        self.detok = detokenizer
        # Constrained calls are in the template's layout: stream them piecewise.
        self.assembler = Assembler(tools=req.tools, stop=req.stop, parse=req.parse, parts=req.constraint is not None,
                                   inserts=req.inserts)
        self.text_end: list[int] = []  # characters of output text after each output token
        self.cached = cached
        self.admitted = admitted
        self.first: float | None = None
        self.sent_at = 0.0  # when the last Delta went to a streaming client
        self.output_ids: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[TopLogprobs] = []
        self.unsent = Delta("", [], [], [], [])


def _wait_thread_gone(native_id: int | None) -> None:
    """Wait until an OS thread has really ended, not just its Python part.

    MLX keeps a per-thread compile cache whose destructor runs after `join()` returns
    and takes the GIL; if the interpreter is finalizing by then, the process aborts
    ("terminate called without an active exception"). Linux lists live threads in
    /proc; elsewhere a short grace period does.
    """
    task = Path(f"/proc/self/task/{native_id}")
    if native_id is None or not task.parent.is_dir():
        time.sleep(0.05)
        return
    for _ in range(5000):
        if not task.exists():
            return
        time.sleep(0.001)


class Engine:
    """Owns the model; one thread decodes for everyone."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        registry: ServedAdapters,
        max_batch: int | None = None,
        max_queue: int | None = None,
        prefix_cache_bytes: int = 1 << 30,
        prefill_step_size: int = 512,
        metrics: Metrics | None = None,
        memory_fraction: float | None = None,
    ):
        self.model_path = Path(model_path)
        # None: the device's default (DEFAULT_LIMITS), decided when the model thread starts.
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_batch = 8
        self.memory_fraction = memory_fraction
        self.device: DeviceInfo | None = None
        self.prefix_cache_bytes = prefix_cache_bytes
        self.prefill_step_size = prefill_step_size
        self.metrics = metrics or Metrics()
        self.registry = registry
        self.tokenizer = None
        self.config: dict = {}
        self._cond = threading.Condition()
        self._pending: collections.deque[GenRequest] = collections.deque()
        self._calls: collections.deque[tuple[Callable, Future]] = collections.deque()
        self._stopping = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tinygpt-model", daemon=True)
        # Model-thread state.
        self._models: dict[str, Any] = {}
        self._gens: dict[str, Any] = {}
        self._active: dict[tuple[str, int], _Seq] = {}
        self._prefix = None
        self.n_active = 0

    # ------------------------------------------------------------ any thread

    def start(self) -> Engine:
        """Start the model thread and wait until the model is loaded (raises its error)."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.ident is None:
            return
        self._thread.join()
        _wait_thread_gone(self._thread.native_id)

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self._error is None and not self._stopping

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, req: GenRequest) -> None:
        """Queue a request; a full queue is a 503 the client should retry."""
        with self._cond:
            if not self.healthy:
                raise ApiError(503, "the model thread is not running", type="server_error", code="unavailable")
            if len(self._pending) >= self.max_queue:
                self.metrics.rejected.inc(reason="queue_full")
                raise ApiError(
                    503,
                    f"server busy: {len(self._pending)} requests already waiting; retry shortly",
                    type="server_error",
                    code="server_busy",
                    headers={"Retry-After": "1"},
                )
            self._pending.append(req)
            self._cond.notify()

    def call(self, fn: Callable[[Engine], Any]) -> Future:
        """Run `fn(engine)` on the model thread between decode steps (adapter operations)."""
        fut: Future = Future()
        with self._cond:
            if not self.healthy:
                fut.set_exception(ApiError(503, "the model thread is not running", type="server_error"))
                return fut
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    # ------------------------------------------------------------ model thread

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as e:  # reported to start()'s caller
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stopping:
                self._serve_calls()
                self._admit()
                if self._active:
                    self._step()
                    self._reap_cancelled()
                self._free_retired()
        except BaseException as e:
            log.exception("model thread died")
            self._error = e
        finally:
            self._fail_all(ApiError(503, "the server is shutting down", type="server_error"))
            self._release_arrays()

    def _release_arrays(self) -> None:
        """Drop every array here, on the thread whose stream made them.

        Arrays of a thread-local stream destroyed after that thread is gone (at
        interpreter exit) abort the process; mlx-lm's server does the same cleanup.
        """
        import gc

        from mlx_lm.generate import generation_stream

        # Let any step still computing asynchronously finish before its arrays go.
        mx.synchronize(generation_stream)
        for gen in self._gens.values():
            gen.close()
        self._gens.clear()
        self._active.clear()
        self._models.clear()
        self._prefix = None
        gc.collect()
        mx.synchronize()

    def _load(self) -> None:
        import mlx_lm

        self.device = device.apply_memory_budget(device.memory_fraction(self.memory_fraction))
        batch, queue, prefill = DEFAULT_LIMITS[self.device.backend]
        self.max_batch = self.max_batch or batch
        self.max_queue = self.max_queue if self.max_queue is not None else queue
        self.prefill_batch = prefill
        model, tokenizer, config = mlx_lm.load(str(self.model_path), return_config=True)
        self.device = msgspec.structs.replace(self.device, dtype=device.cast_for_device(model, self.device))
        self.tokenizer, self.config = tokenizer, config
        self._detokenizer = tokenizer.detokenizer
        if type(self._detokenizer) is BPEStreamingDetokenizer:
            self._detokenizer.__class__ = ExactBPEDetokenizer
        self._models[BASE] = model
        self._prefix = PrefixCache(max_size=1 << 16, max_bytes=self.prefix_cache_bytes)
        self._eos = sorted(tokenizer.eos_token_ids)

    @property
    def base_model(self):
        return self._models[BASE]

    def add_model(self, key: str, model) -> None:
        """Serve `model` under `key` (model thread; adapter loads call this)."""
        self._models[key] = model

    def _serve_calls(self) -> None:
        while self._calls:
            fn, fut = self._calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self))
                except BaseException as e:
                    fut.set_exception(e)

    def _admit(self) -> None:
        with self._cond:
            if not self._active and not self._pending and not self._calls and not self._stopping:
                self._cond.wait(timeout=0.5)
            room = self.max_batch - len(self._active)
            batch = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
        for req in batch:
            try:
                self._start(req)
            except ApiError as e:
                self._finish_failed(req, e)
            except Exception as e:
                log.exception("could not start request %s", req.id)
                self._finish_failed(req, ApiError(500, f"internal error starting generation: {e}", type="server_error"))

    def _generator(self, key: str):
        gen = self._gens.get(key)
        if gen is None:
            gen = BatchGenerator(
                self._models[key],
                stop_tokens=[[t] for t in self._eos],
                completion_batch_size=self.max_batch,
                prefill_batch_size=min(self.prefill_batch, self.max_batch),
                prefill_step_size=self.prefill_step_size,
            )
            batch_step.install(gen)
            self._gens[key] = gen
        return gen

    def _start(self, req: GenRequest) -> None:
        if req.cancelled.is_set():
            self._finish_failed(req, ApiError(499, "client closed the request"))
            return
        admitted = time.perf_counter()
        self.metrics.queue_wait.observe(admitted - req.submitted)
        prompt = req.prompt_ids
        cache, rest = self._prefix.fetch_nearest_cache(req.key, prompt)
        if cache is not None and not rest:
            # The whole prompt is cached, but generation needs one token to feed.
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = prompt[-1:]
            else:
                cache, rest = None, prompt
        cached = len(prompt) - len(rest)
        processors = make_processors(
            len(prompt),
            logit_bias=req.logit_bias,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
        )
        if req.constraint is not None:
            # Last, so the mask sees the penalised logits and has the final word.
            processors.append(TimedConstraint(req.constraint, self.metrics.constraint.observe))
        gen = self._generator(req.key)
        sampler = make_sampler(req.temperature, req.top_p, req.seed)
        (uid,) = gen.insert(
            [rest],
            max_tokens=[req.max_tokens],
            caches=[cache],
            all_tokens=[list(prompt[:cached])],
            samplers=[sampler],
            logits_processors=[processors],
        )
        detokenizer = copy.copy(self._detokenizer)  # shares the token map; own state
        detokenizer.reset()
        self._active[(req.key, uid)] = _Seq(req, uid, detokenizer, cached, admitted, sampler, processors)
        self.n_active = len(self._active)
        req.events.put(Started(prompt_tokens=len(prompt), cached_tokens=cached))

    def _step(self) -> None:
        for key in list(self._gens):
            gen = self._gens[key]
            if not any(k == key for k, _ in self._active):
                continue
            try:
                start, prefill = time.perf_counter(), gen._counters.prompt_time
                cpu = time.thread_time()
                _, responses = gen.next()
                if not responses:
                    continue
                batch = gen._generation_batch
                stepped = time.perf_counter()
                self.metrics.decode_steps.inc()
                # The sampled tokens' logprobs, evaluated with the tokens in the step's graph
                # (batch_step), not by one op per sequence here.
                for r, lp in zip(responses, batch.chosen):
                    self._on_token(key, gen, r, lp)
                self._account(start, stepped, gen._counters.prompt_time - prefill, batch)
                self.metrics.step_cpu_seconds.inc(time.thread_time() - cpu)
            except Exception as e:
                # A failure inside one batch (e.g. a constraint raising) fails that batch only.
                log.exception("decode step failed for %s", key)
                self._drop_generator(key, ApiError(500, f"generation failed: {e}", type="server_error"))

    def _account(self, start: float, stepped: float, prefill: float, batch) -> None:
        """Split one decode step's model-thread time into phases (/metrics)."""
        inc = self.metrics.step_seconds.inc
        inc(prefill, phase="prefill")
        inc(batch.launch_s, phase="launch")
        inc(batch.wait_s, phase="wait")
        inc(max(0.0, stepped - start - prefill - batch.launch_s - batch.wait_s), phase="step")
        inc(time.perf_counter() - stepped, phase="tokens")

    def _top(self, row, k: int) -> TopLogprobs:
        idx = mx.argpartition(-row, kth=k - 1)[:k]
        pairs = list(zip(idx.tolist(), row[idx].tolist()))
        pairs.sort(key=lambda p: -p[1])
        return pairs

    def _on_token(self, key: str, gen, r, logprob: float) -> None:
        seq = self._active.get((key, r.uid))
        if seq is None:
            return
        now = time.perf_counter()
        if seq.first is None:
            seq.first = now
            self.metrics.ttft.observe(now - seq.req.submitted, model=seq.req.model)
        token = r.token
        eos = r.finish_reason == "stop"
        top = self._top(r.logprobs, seq.req.top_logprobs) if seq.req.top_logprobs else []
        piece = self._emit(seq, token, logprob, top, eos=eos, final=r.finish_reason is not None)
        error = getattr(seq.req.constraint, "error", None)
        if error is not None:
            # The grammar hit its parser limits mid-decode: a 400 naming them, never the
            # unconstrained rest of the output.
            if r.finish_reason is None:
                gen.remove([seq.uid])
            self._fail_active(key, seq, ApiError(400, str(error), param="response_format" if seq.req.constraint.kind != "tools" else "tools"))
        elif r.finish_reason is not None:
            self._prefix_insert(key, r.all_tokens, r.prompt_cache)
            self._finish(key, seq, r.finish_reason, eos=eos)
        elif seq.assembler.stopped:
            self._stop(key, gen, seq)
        elif self._fast_forward(key, gen, seq):
            pass
        elif seq.req.stream and (piece or seq.req.top_logprobs):
            self._send(seq, now)

    def _emit(self, seq: _Seq, token: int, logprob: float, top, *, eos: bool = False, final: bool = False):
        """Record one output token (sampled or forced) and feed its text to the assembler."""
        seq.output_ids.append(token)
        seq.logprobs.append(logprob)
        seq.top.append(top)
        text = ""
        if not eos:
            seq.detok.add_token(token)
            text = seq.detok.last_segment
        if final:
            seq.detok.finalize()
            text += seq.detok.last_segment
        piece = seq.assembler.feed(text)
        seq.text_end.append(seq.assembler.fed)
        if not eos:
            # The stop token is not part of what the client reads (OpenAI omits it too).
            seq.unsent.ids.append(token)
            seq.unsent.logprobs.append(logprob)
            seq.unsent.top.append(top)
        seq.unsent.content += piece.content
        seq.unsent.calls += piece.calls
        seq.unsent.parts += piece.parts
        return piece

    def _stop(self, key: str, gen, seq: _Seq) -> None:
        """End a sequence the assembler stopped: a stop string, or a repeated tool call
        (whose tokens are dropped: the turn is what came before it)."""
        cut = seq.assembler.cut
        if cut is None:
            caches = gen.remove([seq.uid], return_prompt_caches=True)
            if seq.uid in caches:
                cache, tokens = caches[seq.uid]
                self._prefix_insert(key, tokens, cache)
        else:
            gen.remove([seq.uid])
            keep = sum(1 for end in seq.text_end if end <= cut)
            drop = len(seq.output_ids) - keep
            del seq.output_ids[keep:], seq.logprobs[keep:], seq.top[keep:]
            seq.forced = [i for i in seq.forced if i < keep]
            unsent = min(drop, len(seq.unsent.ids))
            if unsent:
                del seq.unsent.ids[-unsent:], seq.unsent.logprobs[-unsent:], seq.unsent.top[-unsent:]
            self.metrics.rejected.inc(reason="repeated_tool_call")
        self._finish(key, seq, "stop", eos=False)

    def _fast_forward(self, key: str, gen, seq: _Seq) -> bool:
        """Feed the tokens the grammar forces next in one forward pass instead of one step
        each: the JSON skeleton, a function name that is the only choice, closing brackets.

        The batch has already run the model on the last token and sampled the one after
        under the mask; that pending sample is dropped with the sequence, which goes back
        in with the forced tokens as a prompt continuation on its own KV cache (one
        prefill of k tokens, joined to the batch again for the next sampled token). They
        are recorded as output, marked forced: the model did not choose them.
        """
        constraint = seq.req.constraint
        forced = getattr(constraint, "forced", None)
        if forced is None or not constraint.started:
            return False
        room = seq.req.max_tokens - len(seq.output_ids)
        ids = forced()[: max(0, room - 1)]
        # Re-entering the batch costs a prefill pass and a step before the next sample:
        # worth it from three forced tokens (k single steps become two passes).
        if len(ids) < FAST_FORWARD_MIN:
            return False
        caches = gen.remove([seq.uid], return_prompt_caches=True)
        if seq.uid not in caches:
            return False
        cache, tokens = caches[seq.uid]
        constraint.advance_many(ids)
        # The next processor call sees the last forced id as its newest token: already in.
        constraint.skip_next()
        (uid,) = gen.insert(
            [ids],
            max_tokens=[room - len(ids)],
            caches=[cache],
            all_tokens=[list(tokens)],
            samplers=[seq.sampler],
            logits_processors=[seq.processors],
        )
        del self._active[(key, seq.uid)]
        seq.uid = uid
        self._active[(key, uid)] = seq
        for token in ids:
            seq.forced.append(len(seq.output_ids))
            self._emit(seq, token, 0.0, [])
        self.metrics.forced_tokens.inc(len(ids))
        if seq.assembler.stopped:
            self._stop(key, gen, seq)
        elif seq.req.stream and (seq.unsent.content or seq.unsent.parts or seq.req.top_logprobs):
            self._send(seq, time.perf_counter())
        return True

    def _send(self, seq: _Seq, now: float) -> None:
        """Hand a streaming client what it has not read yet, unless it got some very recently
        (the rest waits for the next token, or goes with `Done`)."""
        if now - seq.sent_at < min(STREAM_INTERVAL_MAX, STREAM_SECONDS_PER_ACTIVE * self.n_active):
            return
        seq.req.events.put(seq.unsent)
        seq.unsent = Delta("", [], [], [], [])
        seq.sent_at = now

    def _prefix_insert(self, key: str, tokens, cache) -> None:
        if not tokens or not cache:
            return
        self._prefix.insert_cache(key, list(tokens), cache)
        live = sum(g.prompt_cache_nbytes for g in self._gens.values())
        self._prefix.trim_to(n_bytes=self.prefix_cache_bytes - live)

    def _finish(self, key: str, seq: _Seq, reason: str, *, eos: bool) -> None:
        del self._active[(key, seq.uid)]
        self.n_active = len(self._active)
        tail = seq.assembler.finish()
        seq.unsent.content += tail.content
        seq.unsent.calls += tail.calls
        calls = seq.assembler.calls
        if reason == "stop" and calls:
            reason = "tool_calls"
        now = time.perf_counter()
        first = seq.first or now
        timings = Timings(
            queued_s=seq.admitted - seq.req.submitted,
            prefill_s=first - seq.admitted,
            decode_s=now - first,
            ttft_s=first - seq.req.submitted,
            prompt_tokens=len(seq.req.prompt_ids),
            cached_tokens=seq.cached,
        )
        model = seq.req.model
        self.metrics.completions.inc(model=model, finish_reason=reason)
        self.metrics.prompt_tokens.inc(len(seq.req.prompt_ids), model=model)
        self.metrics.cached_tokens.inc(seq.cached, model=model)
        self.metrics.completion_tokens.inc(len(seq.output_ids), model=model)
        self.metrics.latency.observe(now - seq.req.submitted, model=model)
        self.registry.release(seq.req.key)
        seq.req.events.put(
            Done(
                finish_reason=reason,
                content=seq.assembler.text(),
                calls=list(calls),
                output_ids=seq.output_ids,
                logprobs=seq.logprobs,
                top=seq.top,
                tail=seq.unsent,
                timings=timings,
                eos=eos,
                forced=list(seq.forced),
                text_end=list(seq.text_end),
            )
        )

    def _fail_active(self, key: str, seq: _Seq, error: ApiError) -> None:
        del self._active[(key, seq.uid)]
        self.n_active = len(self._active)
        self._finish_failed(seq.req, error)

    def _finish_failed(self, req: GenRequest, error: ApiError) -> None:
        self.registry.release(req.key)
        req.events.put(Failed(error))

    def _reap_cancelled(self) -> None:
        gone = [(k, s) for k, s in self._active.items() if s.req.cancelled.is_set()]
        for (key, uid), seq in gone:
            self._gens[key].remove([uid])
            del self._active[(key, uid)]
            self._finish_failed(seq.req, ApiError(499, "client closed the request"))
        if gone:
            # Counted before n_active drops, so whoever sees the engine idle sees the count.
            self.metrics.rejected.inc(len(gone), reason="client_gone")
            self.n_active = len(self._active)

    def _drop_generator(self, key: str, error: ApiError) -> None:
        for (k, uid), seq in list(self._active.items()):
            if k == key:
                del self._active[(k, uid)]
                self._finish_failed(seq.req, error)
        self.n_active = len(self._active)
        gen = self._gens.pop(key, None)
        if gen is not None:
            gen.close()

    def _free_retired(self) -> None:
        keys = self.registry.freeable()
        if not keys:
            return
        for key in keys:
            self._drop_generator(key, ApiError(503, f"{key} was unloaded", type="server_error"))
            self._models.pop(key, None)
            self._prefix.drop_model(key)
        # Hand the freed adapter and KV buffers back instead of keeping them in MLX's pool.
        mx.clear_cache()

    def _fail_all(self, error: ApiError) -> None:
        for seq in list(self._active.values()):
            seq.req.events.put(Failed(error))
        self._active.clear()
        with self._cond:
            pending, self._pending = list(self._pending), collections.deque()
            calls, self._calls = list(self._calls), collections.deque()
        for req in pending:
            req.events.put(Failed(error))
        for _, fut in calls:
            if not fut.done():
                fut.set_exception(error)

    @property
    def prefix_cache_nbytes(self) -> int:
        return self._prefix.nbytes if self._prefix is not None else 0
