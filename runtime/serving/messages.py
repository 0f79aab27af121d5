"""`/v1/messages`: the Anthropic Messages API on the chat-completions core.

A request is decoded into `MessagesRequest` and turned into the `ChatRequest` chat
completions use: ``system`` becomes the system message, ``tool_use`` blocks an
assistant turn's tool calls, ``tool_result`` blocks tool messages, ``input_schema``
the function's parameters, and ``tool_choice`` any / tool / none the chat side's
required / named / none, so every forced ``tool_use`` input is grammar-constrained to
its schema. `Completions` prepares, generates and records it (specialists, limits,
trajectories); this module only shapes the answer: content blocks and ``stop_reason``,
or for a stream Anthropic's event sequence (``message_start``, ``content_block_*``,
``message_delta``, ``message_stop``).

Token continuity: an agent sends a tool call back as a parsed ``input`` object, not the
text the model wrote. The arguments text of recent calls is kept by call id, and used
when the object sent back equals it, so the turn re-renders to its sampled token ids
and the conversation stays one trajectory without a ``prefix_mismatch``.
"""

from __future__ import annotations

import collections
import json
import threading

import msgspec

from .completions import TOOL_MODE_HEADER, ClientGone, Completions, Prepared, Writer, server_timing
from .events import Delta, Done, Started
from .protocol import (
    ApiError,
    ChatRequest,
    FunctionCall,
    FunctionDef,
    Message,
    NamedFunction,
    NamedToolChoice,
    Tool,
    ToolCallIn,
    decode,
    encode,
)
from .messages_protocol import (
    ContentOut,
    CountTokensRequest,
    DeltaUsage,
    MessageOut,
    MessagesRequest,
    StopDelta,
    TextBlock,
    TextOut,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
    UsageOut,
    _Conversation,
    error_body,
)
from .recorder import SESSION_HEADER
from .responses import new_id

STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens"}


def tool_use_id(call) -> str:
    """Anthropic-style id for a call (the same suffix as its chat-side ``call_`` id); sets it on the call."""
    if call.id.startswith("call_"):
        call.id = "toolu_" + call.id.removeprefix("call_")
    return call.id


class VerbatimArguments:
    """Call id → the arguments text the model wrote, for the most recent calls (bounded)."""

    def __init__(self, max_entries: int = 20_000):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._texts: collections.OrderedDict[str, str] = collections.OrderedDict()

    def put(self, call_id: str, arguments: str) -> None:
        with self._lock:
            self._texts[call_id] = arguments
            while len(self._texts) > self.max_entries:
                self._texts.popitem(last=False)

    def text_for(self, call_id: str, value: dict) -> str:
        """The model's own text when `value` is what it wrote, else `value` as JSON."""
        with self._lock:
            text = self._texts.get(call_id)
        if text is not None:
            try:
                if json.loads(text) == value:
                    return text
            except ValueError:
                pass
        return json.dumps(value, ensure_ascii=False)


def to_messages(req: _Conversation, verbatim: VerbatimArguments) -> list[Message]:
    """System text, then each message's blocks as chat messages (tool results as tool messages)."""
    out: list[Message] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        out.append(Message(role="system", content=system))
    for i, m in enumerate(req.messages):
        blocks = [TextBlock(text=m.content)] if isinstance(m.content, str) else m.content
        where = f"messages[{i}]"
        if m.role == "user":
            text: list[str] = []
            for b in blocks:
                if isinstance(b, ToolUseBlock):
                    raise ApiError(400, f"{where}: tool_use blocks belong in assistant messages", param=where)
                if isinstance(b, ToolResultBlock):
                    if text:
                        out.append(Message(role="user", content="\n".join(text)))
                        text = []
                    content = b.text()
                    if b.is_error:
                        # The model must see that the call failed; the trajectory marks it not ok.
                        content = json.dumps({"error": content}, ensure_ascii=False)
                    out.append(Message(role="tool", tool_call_id=b.tool_use_id, content=content))
                else:
                    text.append(b.text)
            if text or not blocks:
                out.append(Message(role="user", content="\n".join(text)))
        else:
            if isinstance(m.content, list) and any(isinstance(b, ToolResultBlock) for b in blocks):
                raise ApiError(400, f"{where}: tool_result blocks belong in user messages", param=where)
            calls = [
                ToolCallIn(id=b.id, function=FunctionCall(name=b.name, arguments=verbatim.text_for(b.id, b.input)))
                for b in blocks
                if isinstance(b, ToolUseBlock)
            ]
            text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
            out.append(Message(role="assistant", content=text or None, tool_calls=calls or None))
    if req.messages[-1].role == "assistant":
        raise ApiError(400, "the last message must be a user message (assistant prefill is not supported)",
                       param=f"messages[{len(req.messages) - 1}]")
    return out


def to_tools(req: _Conversation) -> tuple[list[Tool] | None, object, bool | None]:
    """(tools, chat tool_choice, parallel_tool_calls) for the request's tools and tool_choice."""
    tools = [
        Tool(type="function", function=FunctionDef(name=t.name, description=t.description, parameters=t.input_schema,
                                                   strict=t.strict))
        for t in req.tools or []
    ]
    tc = req.tool_choice
    if tc is None:
        return tools or None, None, None
    if isinstance(tc, ToolChoiceNone):
        return tools or None, "none", None
    parallel = False if tc.disable_parallel_tool_use else None
    if isinstance(tc, ToolChoiceTool):
        choice = NamedToolChoice(type="function", function=NamedFunction(name=tc.name))
    else:
        choice = "required" if isinstance(tc, ToolChoiceAny) else "auto"
    return tools or None, choice, parallel


class Messages:
    """`POST /v1/messages` and `/v1/messages/count_tokens` against the chat-completions core."""

    def __init__(self, completions: Completions):
        self.c = completions
        self.verbatim = VerbatimArguments()

    def handle(self, body: bytes, headers, out: Writer) -> None:
        req = decode(body, MessagesRequest)
        tools, choice, parallel = to_tools(req)
        chat = ChatRequest(
            model=req.model,
            messages=to_messages(req, self.verbatim),
            stream=req.stream,
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_tokens,
            stop=req.stop_sequences,
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
            user=req.metadata.user_id if req.metadata else None,
        )
        p = self.c.prepare(chat, headers.get(SESSION_HEADER), headers.get(TOOL_MODE_HEADER))
        p.id = p.gen.id = new_id("msg")
        answer_headers = self.c.submit(p, {})
        if req.stream:
            _Stream(self, req, p, out, answer_headers).run()
            return
        done = None
        for event in self.c.events(p, out):
            done = event if isinstance(event, Done) else None
        self.finish(p, done)
        answer_headers["Server-Timing"] = server_timing(done)
        reason, sequence = self.stop_reason(p, done)
        blocks: list[ContentOut] = [TextOut(text=done.content)] if done.content else []
        blocks += [ToolUseOut(id=c.id, name=c.name, input=msgspec.json.decode(c.arguments)) for c in done.calls]
        message = MessageOut(
            id=p.id, content=blocks, model=req.model, stop_reason=reason, stop_sequence=sequence, usage=self.usage(done)
        )
        out.send_json(200, encode(message), answer_headers)

    def count_tokens(self, body: bytes, out: Writer) -> None:
        """The prompt's length in tokens, as `/v1/messages` would render it (nothing is generated)."""
        req = decode(body, CountTokensRequest)
        tools, _, _ = to_tools(req)
        key, _ = self.c.engine.registry.acquire(req.model)  # unknown model: the same 404
        self.c.engine.registry.release(key)
        text = self.c.prompts.render(to_messages(req, self.verbatim), tools)
        out.send_json(200, encode({"input_tokens": len(self.c.prompts.encode(text))}), {})

    def finish(self, p: Prepared, done: Done) -> None:
        """Give the calls their tool_use ids, remember their text, record the step."""
        for call in done.calls:
            self.verbatim.put(tool_use_id(call), call.arguments)
        self.c.record(p, done)

    def stop_reason(self, p: Prepared, done: Done) -> tuple[str, str | None]:
        if done.finish_reason != "stop" or done.eos or not p.gen.stop:
            return STOP_REASONS.get(done.finish_reason, "end_turn"), None
        # A stop sequence ended it: the earliest one in the sampled text is the one.
        text = self.c.prompts.decode(done.output_ids)
        hits = [(text.find(s), s) for s in p.gen.stop if s in text]
        return "stop_sequence", min(hits)[1] if hits else None

    @staticmethod
    def usage(done: Done) -> UsageOut:
        t = done.timings
        return UsageOut(input_tokens=t.prompt_tokens - t.cached_tokens, output_tokens=len(done.output_ids),
                        cache_read_input_tokens=t.cached_tokens)


class _Stream:
    """One streamed message: ``message_start``, one ``content_block_*`` run per block, ``message_stop``."""

    def __init__(self, api: Messages, req: MessagesRequest, p: Prepared, out: Writer, headers: dict[str, str]):
        self.api, self.req, self.p, self.out, self.headers = api, req, p, out, headers
        self.started = False
        self.blocks = 0  # content blocks opened so far
        self.text_open = False
        self.pending: list[bytes] = []

    def send(self, kind: str, body: dict) -> None:
        self.pending.append(b"event: " + kind.encode() + b"\ndata: " + encode({"type": kind, **body}) + b"\n\n")

    def flush(self) -> None:
        # The events one engine event causes go out in one write (fewer syscalls and packets).
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            self.out.send_event(data)

    def run(self) -> None:
        p = self.p
        try:
            try:
                self.out.start_stream(self.headers)
            except OSError:
                raise ClientGone() from None
            try:
                for event in self.api.c.events(p, self.out):
                    if isinstance(event, Started):
                        self.start(event.prompt_tokens, event.cached_tokens)
                    else:
                        self.start(len(p.prompt.ids), 0)
                        self.delta(event.tail if isinstance(event, Done) else event)
                        if isinstance(event, Done):
                            self.done(event)
                    self.flush()
            except ApiError as e:
                p.gen.cancel()
                if e.status != 499:
                    self.flush()
                    self.out.send_event(b"event: error\ndata: " + error_body(e) + b"\n\n")
        except ClientGone:
            p.gen.cancel()

    def start(self, prompt_tokens: int, cached: int) -> None:
        if self.started:
            return
        self.started = True
        usage = UsageOut(input_tokens=prompt_tokens - cached, output_tokens=0, cache_read_input_tokens=cached)
        message = MessageOut(id=self.p.id, content=[], model=self.req.model, stop_reason=None, stop_sequence=None, usage=usage)
        self.send("message_start", {"message": message})

    def delta(self, delta: Delta) -> None:
        if delta.content:
            if not self.text_open:
                self.text_open = True
                self.send("content_block_start", {"index": self.blocks, "content_block": {"type": "text", "text": ""}})
            self.send("content_block_delta", {"index": self.blocks, "delta": {"type": "text_delta", "text": delta.content}})
        for call in delta.calls:
            self.close_text()
            block = {"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": {}}
            self.send("content_block_start", {"index": self.blocks, "content_block": block})
            self.send("content_block_delta", {"index": self.blocks, "delta": {"type": "input_json_delta", "partial_json": call.arguments}})
            self.send("content_block_stop", {"index": self.blocks})
            self.blocks += 1

    def close_text(self) -> None:
        if self.text_open:
            self.send("content_block_stop", {"index": self.blocks})
            self.blocks += 1
            self.text_open = False

    def done(self, done: Done) -> None:
        self.close_text()
        self.api.finish(self.p, done)
        reason, sequence = self.api.stop_reason(self.p, done)
        usage = self.api.usage(done)
        self.send("message_delta", {
            "delta": StopDelta(stop_reason=reason, stop_sequence=sequence),
            "usage": DeltaUsage(output_tokens=usage.output_tokens, input_tokens=usage.input_tokens,
                                cache_read_input_tokens=usage.cache_read_input_tokens),
        })
        self.send("message_stop", {})
