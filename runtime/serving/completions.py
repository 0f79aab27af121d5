"""`/v1/chat/completions`: request → prompt ids → engine → OpenAI response → recorded step.

Runs in the HTTP thread of the request and never touches arrays: it renders and
tokenizes, builds the grammar constraint (the model thread is the one to call it),
submits a `GenRequest` and turns the engine's events into a response or an SSE stream.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Iterator

import msgspec

from ..contracts.tool_mode import check_tool_mode
from ..contracts.trajectory import SamplingParams, Step, ToolCall, TopLogprob
from .adapters import AdapterInfo
from .engine import Engine
from .events import Delta, Done, Failed, GenRequest, Started
from .prompts import ChatPrompts, PriorTurn, Prompt
from .protocol import (
    ApiError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    FunctionDelta,
    FunctionOut,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprobOut,
    Usage,
    encode,
)
from .protocol import Delta as DeltaOut
from .recorder import Match, Recorder, StepRecord, reply_message

log = logging.getLogger("tinygpt.serving")

# How often a waiting HTTP thread checks that its client and the model thread are alive.
POLL_SECONDS = 0.25


class ClientGone(Exception):
    """The client closed the connection."""


class Writer(Protocol):
    """What the HTTP layer gives a completion to answer with."""

    def send_json(self, status: int, body: bytes, headers: dict[str, str]) -> None: ...
    def start_stream(self, headers: dict[str, str]) -> None: ...
    def send_event(self, data: bytes) -> None: ...  # raises ClientGone
    def client_gone(self) -> bool: ...


@dataclass
class Prepared:
    req: ChatRequest
    gen: GenRequest
    prompt: Prompt
    match: Match
    adapter: AdapterInfo | None
    sampling: SamplingParams
    tools: list[dict[str, Any]]
    constraint_kind: str | None
    id: str
    created: int
    # "full" or "deferred" (runtime/grammar/deferred.py) for a request with tools, else "full".
    tool_mode: str = "full"


class Completions:
    """Chat completions against one engine, recorded by one recorder (None: not recorded)."""

    def __init__(
        self,
        engine: Engine,
        prompts: ChatPrompts,
        recorder: Recorder | None,
        *,
        context_length: int,
        default_max_tokens: int,
        vocab_size: int,
        project: str = "default",
        tool_mode: str = "full",
        tool_modes: dict[str, str] | None = None,
    ):
        self.engine = engine
        self.prompts = prompts
        self.recorder = recorder
        self.context_length = context_length
        self.default_max_tokens = default_max_tokens
        self.vocab_size = vocab_size
        self.project = project
        # The server's tool mode, and per specialist name (tinygpt.project.json pins).
        self.tool_mode = tool_mode
        self.tool_modes = dict(tool_modes or {})
        self._grammar_info = None
        self._grammar_lock = threading.Lock()
        self.fingerprint = f"tinygpt-{engine.registry.base_digest[:12]}"
        # Build the grammar tokenizer, json_object and the tool envelope now, off the
        # request path, so the first constrained request does not pay for them.
        threading.Thread(target=self._warm_grammar, name="tinygpt-grammar-warm", daemon=True).start()

    def _warm_grammar(self) -> None:
        from tinygpt.runtime.grammar import warm_up

        try:
            warm_up(self._grammar(), on_compile=self.engine.metrics.grammar_compile.observe)
        except Exception:  # a tokenizer the grammar cannot use: requests say so (501)
            log.warning("grammar warm-up failed", exc_info=True)

    # ------------------------------------------------------------ preparing

    def prepare(self, req: ChatRequest, session: str | None, tool_mode: str | None = None) -> Prepared:
        """Validate, resolve the model and build the prompt; raises ApiError (4xx).

        `tool_mode`: the request's X-TinyGPT-Tool-Mode header (it wins over `metadata.tool_mode`).
        """
        self._check(req, session)
        asked_mode = _asked_tool_mode(req, tool_mode)
        key, adapter = self.engine.registry.acquire(req.model)
        try:
            mode = asked_mode or (self.tool_modes.get(adapter.name) if adapter else None) or self.tool_mode
            return self._prepare(req, session, key, adapter, mode)
        except BaseException:
            self.engine.registry.release(key)
            raise

    def _check(self, req: ChatRequest, session: str | None) -> None:
        if req.top_logprobs and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if req.stream_options is not None and not req.stream:
            raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
        if session is not None and not (0 < len(session) <= 200 and session.isprintable()):
            raise ApiError(400, "the session id must be 1-200 printable characters", param="session_id")
        for m in req.messages:
            if m.role == "tool" and m.tool_call_id is None:
                raise ApiError(400, "a tool message needs tool_call_id", param="messages")
            if m.tool_calls and m.role != "assistant":
                raise ApiError(400, "only assistant messages carry tool_calls", param="messages")
            if m.refusal or m.annotations:
                raise ApiError(400, "refusal / annotations are not supported in messages", param="messages")

    def _prepare(self, req: ChatRequest, session: str | None, key: str, adapter: AdapterInfo | None, mode: str) -> Prepared:
        match = self.recorder.index.find(session, req.messages) if self.recorder else Match("", 0, session)
        uses_tools = bool(req.tools) and req.tool_choice != "none"
        mode = mode if uses_tools else "full"
        text = self.prompts.render(req.messages, req.tools, mode)
        prompt = self.prompts.build(text, match.prior)
        n = len(prompt.ids)
        if n >= self.context_length:
            raise ApiError(
                400,
                f"the prompt is {n} tokens; this model's context is {self.context_length}",
                code="context_length_exceeded",
                param="messages",
            )
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and n + asked > self.context_length:
            raise ApiError(
                400,
                f"prompt ({n} tokens) + max_tokens ({asked}) exceeds this model's context of {self.context_length}",
                code="context_length_exceeded",
                param="max_tokens",
            )
        max_tokens = asked or min(self.default_max_tokens, self.context_length - n)
        constraint, kind, tools_mode, parse = self._constraint(req, deferred=mode == "deferred")
        inserts = None
        budget = max_tokens
        if mode == "deferred":
            from tinygpt.runtime.grammar.deferred import insertions

            inserts = insertions([msgspec.to_builtins(t) for t in req.tools])
            # The fed schema is input, not the model's answer: max_tokens still leaves the
            # model its whole budget for the first call's name and arguments.
            longest = max(len(self.prompts.encode(t)) for t in inserts.values())
            budget = min(max_tokens + longest, self.context_length - n)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        gen = GenRequest(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            key=key,
            model=req.model,
            prompt_ids=prompt.ids,
            max_tokens=budget,
            temperature=temperature,
            top_p=top_p,
            seed=req.seed,
            # A JSON answer must stay whole: stop strings apply to free text only.
            # With tool_choice required / a named function the output is only calls: no stop.
            stop=stop if kind not in ("json_object", "json_schema") and not (tools_mode and choice_forces_calls(req)) else [],
            tools=tools_mode,
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else 0,
            stream=req.stream,
            logit_bias=self._logit_bias(req.logit_bias),
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            constraint=constraint,
            parse=parse,
            inserts=inserts,
        )
        sampling = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=req.seed,
            stop=stop,
            logprobs=bool(req.logprobs),
            top_logprobs=req.top_logprobs or 0,
        )
        tools = [msgspec.to_builtins(t) for t in req.tools or []]
        if uses_tools:
            self.engine.metrics.tool_requests.inc(mode=mode)
        return Prepared(req, gen, prompt, match, adapter, sampling, tools, kind, gen.id, int(time.time()), mode)

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        if not bias:
            return None
        out = {}
        for k, v in bias.items():
            if not k.isdigit() or int(k) >= self.vocab_size:
                raise ApiError(400, f"logit_bias key {k!r} is not a token id of this model", param="logit_bias")
            out[int(k)] = v
        return out

    def _constraint(self, req: ChatRequest, *, deferred: bool = False):
        """(constraint, kind, parse tool calls?, parser) for the request's tools / response_format."""
        choice = req.tool_choice if req.tool_choice is not None else ("auto" if req.tools else "none")
        if choice != "none" and not req.tools:
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        fmt = req.response_format
        if fmt is not None and fmt.type == "json_schema" and (fmt.json_schema is None or fmt.json_schema.schema is None):
            raise ApiError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        wants_format = fmt is not None and fmt.type != "text"
        tools_mode = bool(req.tools) and choice != "none"
        if not tools_mode and not wants_format:
            return None, None, False, None
        from tinygpt.runtime.grammar import GrammarError, build_constraint, parse_tool_calls

        try:
            constraint = build_constraint(
                self._grammar(),
                tools=[msgspec.to_builtins(t) for t in req.tools] if req.tools else None,
                tool_choice=msgspec.to_builtins(choice),
                parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
                response_format=msgspec.to_builtins(fmt) if wants_format else None,
                deferred=deferred,
                on_compile=self.engine.metrics.grammar_compile.observe,
            )
        except GrammarError as e:
            raise ApiError(400, str(e), param="tools" if req.tools else "response_format") from None
        kind = getattr(constraint, "kind", None) if constraint is not None else None
        return constraint, kind, tools_mode, parse_tool_calls

    def _grammar(self):
        with self._grammar_lock:
            if self._grammar_info is None:
                from tinygpt.runtime.grammar import TokenizerInfo

                try:
                    self._grammar_info = TokenizerInfo.from_tokenizer(self.prompts.tokenizer, vocab_size=self.vocab_size)
                except ValueError as e:
                    raise ApiError(501, f"constrained decoding is not available for this tokenizer: {e}",
                                   type="server_error") from None
            return self._grammar_info

    # ------------------------------------------------------------ answering

    def run(self, p: Prepared, out: Writer, headers: dict[str, str]) -> None:
        """Submit and answer (a JSON body or an SSE stream); records the step when done."""
        headers = self.submit(p, headers)
        if p.req.stream:
            self._stream(p, out, headers)
        else:
            done = self._wait(p, out)
            self._record(p, done)
            headers["Server-Timing"] = server_timing(done)
            out.send_json(200, encode(self._completion(p, done)), headers)

    # The same core for the other wire formats (responses.py, messages.py): they prepare
    # a ChatRequest, then submit, read `events` and `record` the step like `run` does.

    def submit(self, p: Prepared, headers: dict[str, str]) -> dict[str, str]:
        """Hand `p` to the engine; returns `headers` plus the model / trajectory / step headers."""
        try:
            self.engine.submit(p.gen)
        except BaseException:
            self.engine.registry.release(p.gen.key)
            raise
        # Which weights answered: "name@version" for a specialist (a swap may be under way).
        headers = {**headers, "X-TinyGPT-Model": p.adapter.key if p.adapter else self.engine.registry.base_name}
        if p.match.trajectory_id:
            headers |= {"X-TinyGPT-Trajectory": p.match.trajectory_id, "X-TinyGPT-Step": str(p.match.index)}
        return headers

    def events(self, p: Prepared, out: Writer) -> Iterator[Started | Delta | Done]:
        """The submitted request's events up to its `Done` (Deltas merged when the model runs ahead).

        A failure raises its ApiError; a client that left cancels the request and raises ClientGone.
        """
        while True:
            event = self._next_batch(p, out) if p.req.stream else self._next_event(p, out)
            if isinstance(event, Failed):
                raise event.error
            yield event
            if isinstance(event, Done):
                return

    def record(self, p: Prepared, done: Done) -> None:
        """Record the finished step (synchronously joins the session index, then queues the write)."""
        self._record(p, done)

    def _next_event(self, p: Prepared, out: Writer):
        while True:
            try:
                return p.gen.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if out.client_gone():
                    p.gen.cancel()
                    raise ClientGone() from None
                if not self.engine.healthy:
                    raise ApiError(503, "the model thread stopped", type="server_error") from None

    def _next_batch(self, p: Prepared, out: Writer):
        """The next event, with every Delta already waiting merged into it.

        When the model thread runs ahead of this one, one SSE write then carries several
        tokens: fewer wake-ups and writes competing with decoding for the GIL.
        """
        event = self._next_event(p, out)
        while isinstance(event, Delta):
            try:
                nxt = p.gen.events.get_nowait()
            except queue.Empty:
                return event
            if isinstance(nxt, Delta):
                event = _merge(event, nxt)
            elif isinstance(nxt, Done):
                nxt.tail = _merge(event, nxt.tail)
                return nxt
            else:
                return nxt
        return event

    def _wait(self, p: Prepared, out: Writer) -> Done:
        while True:
            event = self._next_event(p, out)
            if isinstance(event, Done):
                return event
            if isinstance(event, Failed):
                raise event.error

    def _stream(self, p: Prepared, out: Writer, headers: dict[str, str]) -> None:
        n_calls = 0
        try:
            try:
                out.start_stream(headers)
            except OSError:
                raise ClientGone() from None
            self._send(out, p, DeltaOut(role="assistant", content=""), None, None)
            while True:
                event = self._next_batch(p, out)
                if isinstance(event, Started):
                    continue
                if isinstance(event, Failed):
                    if event.error.status != 499:
                        out.send_event(b"data: " + event.error.body() + b"\n\n")
                    return
                delta = event.tail if isinstance(event, Done) else event
                if delta.content or delta.calls or delta.parts or (p.req.logprobs and delta.ids):
                    n_calls = self._send_delta(out, p, delta, n_calls)
                if isinstance(event, Done):
                    self._record(p, event)
                    self._send(out, p, DeltaOut(), event.finish_reason, None)
                    if p.req.stream_options is not None and p.req.stream_options.include_usage:
                        chunk = ChatCompletionChunk(
                            id=p.id, created=p.created, model=p.req.model, choices=[], usage=self._usage(event),
                            system_fingerprint=self.fingerprint,
                        )
                        out.send_event(b"data: " + encode(chunk) + b"\n\n")
                    out.send_event(b"data: [DONE]\n\n")
                    return
        except ClientGone:
            p.gen.cancel()
        except ApiError as e:
            # Headers are out already: the error goes in the stream, as OpenAI does.
            p.gen.cancel()
            try:
                out.send_event(b"data: " + e.body() + b"\n\n")
            except ClientGone:
                pass

    def _send_delta(self, out: Writer, p: Prepared, delta: Delta, n_calls: int) -> int:
        calls: list[ToolCallDelta] = []
        if p.gen.constraint is not None:
            # Streamed as decoded: a first delta with id and name, then argument fragments
            # (consecutive fragments of one call merged into one delta).
            for part in delta.parts:
                if part.id is None and calls and calls[-1].index == part.index:
                    calls[-1].function.arguments += part.arguments
                    continue
                first = part.id is not None
                calls.append(ToolCallDelta(
                    index=part.index, id=part.id if first else msgspec.UNSET, type="function" if first else msgspec.UNSET,
                    function=FunctionDelta(name=part.name if first else msgspec.UNSET, arguments=part.arguments),
                ))
                n_calls = max(n_calls, part.index + 1)
        else:
            for c in delta.calls:
                calls.append(
                    ToolCallDelta(index=n_calls, id=c.id, type="function", function=FunctionDelta(name=c.name, arguments=c.arguments))
                )
                n_calls += 1
        body = DeltaOut(content=delta.content or msgspec.UNSET, tool_calls=calls or msgspec.UNSET)
        logprobs = self._logprobs(delta.ids, delta.logprobs, delta.top) if p.req.logprobs else None
        self._send(out, p, body, None, logprobs)
        return n_calls

    def _send(self, out: Writer, p: Prepared, delta: DeltaOut, finish: str | None, logprobs) -> None:
        chunk = ChatCompletionChunk(
            id=p.id,
            created=p.created,
            model=p.req.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)],
            system_fingerprint=self.fingerprint,
        )
        out.send_event(b"data: " + encode(chunk) + b"\n\n")

    def token_piece(self, token_id: int) -> tuple[str, list[int]]:
        """A token as logprobs report it: its text, and the bytes it writes. A token holding
        part of a multi-byte character decodes to U+FFFD on its own; its `bytes` are the
        real ones (the grammar's byte table), so joining them gives the output text back."""
        text = self.prompts.decode([token_id])
        try:
            raw = self._grammar().token_bytes[token_id]
        except (ApiError, IndexError):  # a tokenizer without a byte table; a padding id
            raw = None
        return text, list(raw if raw is not None else text.encode())

    def _logprobs(self, ids: list[int], lps: list[float], tops: list) -> ChoiceLogprobs:
        content = []
        for i, lp, top in zip(ids, lps, tops or [[]] * len(ids)):
            tok, raw = self.token_piece(i)
            alts = [TopLogprobOut(token=t, logprob=v, bytes=b) for j, v in top for t, b in [self.token_piece(j)]]
            content.append(TokenLogprobOut(token=tok, logprob=lp, bytes=raw, top_logprobs=alts))
        return ChoiceLogprobs(content=content)

    def _usage(self, done: Done) -> Usage:
        prompt = done.timings.prompt_tokens
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=len(done.output_ids),
            total_tokens=prompt + len(done.output_ids),
            prompt_tokens_details=PromptTokensDetails(cached_tokens=done.timings.cached_tokens),
        )

    def _completion(self, p: Prepared, done: Done) -> ChatCompletion:
        calls = [ToolCallOut(id=c.id, function=FunctionOut(name=c.name, arguments=c.arguments)) for c in done.calls]
        visible = len(done.output_ids) - (1 if done.eos else 0)
        logprobs = None
        if p.req.logprobs:
            logprobs = self._logprobs(done.output_ids[:visible], done.logprobs[:visible], done.top[:visible])
        message = ResponseMessage(content=done.content, tool_calls=calls or msgspec.UNSET)
        return ChatCompletion(
            id=p.id,
            created=p.created,
            model=p.req.model,
            choices=[Choice(message=message, finish_reason=done.finish_reason, logprobs=logprobs)],
            usage=self._usage(done),
            system_fingerprint=self.fingerprint,
        )

    # ------------------------------------------------------------ recording

    def _record(self, p: Prepared, done: Done) -> None:
        if self.recorder is None:
            return
        body_ids = done.output_ids[:-1] if done.eos else done.output_ids
        text = self.prompts.decode(body_ids)
        output_text = self.prompts.decode(done.output_ids) if done.eos else text
        # Synchronously, before the client sees the answer: its next turn must find this one.
        self.recorder.index.remember(
            p.match,
            p.req.messages,
            reply_message(done.content, done.calls),
            PriorTurn(p.prompt.ids, p.prompt.text, list(done.output_ids), output_text),
        )
        forced, inserted = list(done.forced), []
        if p.gen.inserts:
            from tinygpt.runtime.grammar.deferred import fed_indices

            inserted = fed_indices(output_text, done.text_end[: len(done.output_ids)], p.gen.inserts)
            # Fed, not chosen: an id of the schema the grammar left to a (one-way) sample is
            # model input all the same.
            forced = sorted(set(forced) | set(inserted))
            self.engine.metrics.schema_tokens.inc(len(inserted))
        steered: list[int] = []
        if forced and p.req.tool_choice is not None and not isinstance(p.req.tool_choice, str):
            # The leading forced run of a named tool_choice: the call's opening and the name
            # (its first id was sampled under a one-way mask, the rest fed at once).
            fed = set(inserted)
            steered = [i for i in _leading_run(forced) if i not in fed] if forced[0] <= 1 else []
        a = p.adapter
        step = Step(
            index=p.match.index,
            prompt_ids=p.prompt.ids,
            output_ids=list(done.output_ids),
            logprobs=list(done.logprobs),
            top_logprobs=[[TopLogprob(token=t, logprob=v) for t, v in top] for top in done.top] if any(done.top) else [],
            text=text,
            tool_calls=[ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in done.calls],
            finish_reason=done.finish_reason,
            timings=done.timings,
            forced=forced,
            tool_mode=p.tool_mode,
            inserted=inserted,
            steered=steered,
            prefix_mismatch=p.prompt.prefix_mismatch,
            constraint=p.constraint_kind,
            model=p.req.model,
            adapter_version=a.version if a else None,
            adapter_digest=a.digest if a else None,
            sampling=p.sampling,
            metadata={k: v for k, v in (p.req.metadata or {}).items() if k != "session_id"},
            request_id=p.id,
            created_at=time.time(),
        )
        registry = self.engine.registry
        self.recorder.record(
            StepRecord(
                match=p.match,
                step=step,
                base_model=registry.base_name,
                base_digest=registry.base_digest,
                adapter=a.name if a else None,
                adapter_version=a.version if a else None,
                adapter_digest=a.digest if a else None,
                sampling=p.sampling,
                tools=p.tools,
                project=self.project,
            )
        )


def server_timing(done: Done) -> str:
    """The standard Server-Timing header: where the time went, in milliseconds."""
    t = done.timings
    return ", ".join(f"{name};dur={1e3 * v:.3f}" for name, v in (("queue", t.queued_s), ("prefill", t.prefill_s), ("decode", t.decode_s)))


TOOL_MODE_HEADER = "X-TinyGPT-Tool-Mode"


def _asked_tool_mode(req: ChatRequest, header: str | None) -> str | None:
    """The request's own tool mode (header, else metadata.tool_mode); a bad one is a 400 naming it."""
    for where, value in ((TOOL_MODE_HEADER, header), ("metadata.tool_mode", (req.metadata or {}).get("tool_mode"))):
        if value is not None:
            try:
                return check_tool_mode(value, where)
            except ValueError as e:
                raise ApiError(400, str(e), param="tool_mode") from None
    return None


def _leading_run(indices: list[int]) -> list[int]:
    """The first run of consecutive indices of a sorted list."""
    run = indices[:1]
    for i in indices[1:]:
        if i != run[-1] + 1:
            break
        run.append(i)
    return run


def choice_forces_calls(req: ChatRequest) -> bool:
    """tool_choice "required" or a named function: the answer is tool calls only."""
    choice = req.tool_choice
    return choice == "required" or (choice is not None and not isinstance(choice, str))


def _merge(a: Delta, b: Delta) -> Delta:
    return Delta(a.content + b.content, a.calls + b.calls, a.ids + b.ids, a.logprobs + b.logprobs, a.top + b.top, a.parts + b.parts)
