"""`/v1/responses`: the OpenAI Responses API on the chat-completions core.

A request is decoded into `ResponsesRequest`, turned into the `ChatRequest` chat
completions use (items → messages, flat function tools → tools, ``text.format`` →
``response_format``) and prepared, generated and recorded by `Completions`: the same
grammar-constrained tool calls, specialists, limits and trajectories. Only the answer's
shape differs: output items, and for a stream the ``response.*`` event sequence.

``previous_response_id`` continues a stored conversation: each stored response keeps
the messages it was answered from (without its instructions, which OpenAI does not
carry over) plus its answer. Those messages are the conversation the trajectory
recorded, so the chained request re-renders to the recorded token ids and joins the
same trajectory by content, as a resent chat history does.
"""

from __future__ import annotations

import collections
import secrets
import threading

import msgspec

from .completions import TOOL_MODE_HEADER, ClientGone, Completions, Prepared, Writer, server_timing
from .events import Delta, Done, Started
from .protocol import (
    ApiError,
    ChatRequest,
    FunctionCall,
    FunctionDef,
    JsonSchemaFormat,
    Message,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCallIn,
    decode,
    encode,
)
from .recorder import SESSION_HEADER
from .responses_protocol import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    FunctionCallItem,
    FunctionCallOut,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputTokensDetails,
    Item,
    ItemEvent,
    Logprob,
    MessageItem,
    MessageOut,
    OutputItem,
    OutputTextOut,
    OutputTokensDetails,
    PartEvent,
    ResponseErrorOut,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextDeltaEvent,
    TextDoneEvent,
    decode_items,
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponseStore:
    """Response id → the conversation it ended with; an LRU bounded by entries and by text held.

    Entries share their `Message` objects with the entries they extend, so a long chain
    costs a tuple of references per response; the text budget counts each entry's whole
    conversation (shared text counted again), which overestimates and so stays a bound.
    """

    def __init__(self, max_entries: int = 4096, max_chars: int = 128_000_000):
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[tuple[Message, ...], int]] = collections.OrderedDict()
        self._chars = 0

    def get(self, response_id: str) -> tuple[Message, ...] | None:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is None:
                return None
            self._entries.move_to_end(response_id)
            return entry[0]

    def put(self, response_id: str, convo: tuple[Message, ...]) -> None:
        size = sum(len(m.text()) + sum(len(c.function.arguments) for c in m.tool_calls or []) for m in convo)
        with self._lock:
            self._entries[response_id] = (convo, size)
            self._chars += size
            while self._entries and (len(self._entries) > self.max_entries or self._chars > self.max_chars):
                _, (_, old) = self._entries.popitem(last=False)
                self._chars -= old

    def __len__(self) -> int:
        return len(self._entries)


def to_messages(items: list[Item]) -> list[Message]:
    """Input items as chat messages: an assistant message and the function calls after it are one turn."""
    out: list[Message] = []
    for item in items:
        last = out[-1] if out else None
        if isinstance(item, MessageItem):
            if item.role == "assistant" and last is not None and last.role == "assistant" and not last.tool_calls:
                last.content = (last.content or "") + item.text()
            else:
                out.append(Message(role=item.role, content=item.text()))
        elif isinstance(item, FunctionCallItem):
            call = ToolCallIn(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            if last is not None and last.role == "assistant":
                last.tool_calls = (last.tool_calls or []) + [call]
            else:
                out.append(Message(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            out.append(Message(role="tool", tool_call_id=item.call_id, content=item.text()))
    return out


def reply_of(done: Done) -> Message:
    """The answer as the assistant message the next turn of the conversation holds."""
    calls = [ToolCallIn(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in done.calls]
    return Message(role="assistant", content=done.content, tool_calls=calls or None)


class Responses:
    """`POST /v1/responses` against the chat-completions core."""

    def __init__(self, completions: Completions, store: ResponseStore | None = None):
        self.c = completions
        self.store = store or ResponseStore()

    # ------------------------------------------------------------ request → chat request

    def handle(self, body: bytes, headers, out: Writer) -> None:
        req = decode(body, ResponsesRequest)
        history: tuple[Message, ...] = ()
        if req.previous_response_id is not None:
            found = self.store.get(req.previous_response_id)
            if found is None:
                raise ApiError(
                    400, f"previous response with id {req.previous_response_id!r} not found (unknown, stored with "
                    "store: false, or evicted)", code="previous_response_not_found", param="previous_response_id",
                )
            history = found
        items = [MessageItem(role="user", content=req.input)] if isinstance(req.input, str) else decode_items(req.input)
        convo = list(history) + to_messages(items)
        head = [Message(role="system", content=req.instructions)] if req.instructions is not None else []
        chat = self.chat_request(req, head + convo)
        session = headers.get(SESSION_HEADER) or (req.metadata or {}).get("session_id")
        p = self.c.prepare(chat, session, headers.get(TOOL_MODE_HEADER))
        p.id = p.gen.id = new_id("resp")
        self.answer(req, p, tuple(convo), out)

    @staticmethod
    def chat_request(req: ResponsesRequest, messages: list[Message]) -> ChatRequest:
        tools = [
            Tool(type="function", function=FunctionDef(name=t.name, description=t.description, parameters=t.parameters,
                                                       strict=t.strict))
            for t in req.tools or []
        ]
        choice = req.tool_choice
        if choice is not None and not isinstance(choice, str):
            choice = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
        fmt = req.text.format if req.text is not None else None
        response_format = None
        if fmt is not None and fmt.type == "json_schema":
            if fmt.schema is None:
                raise ApiError(400, "text.format json_schema needs a schema", param="text.format.schema")
            response_format = ResponseFormat(
                type="json_schema",
                json_schema=JsonSchemaFormat(name=fmt.name, description=fmt.description, schema=fmt.schema, strict=fmt.strict),
            )
        elif fmt is not None and fmt.type == "json_object":
            response_format = ResponseFormat(type="json_object")
        logprobs = bool(req.include) or req.top_logprobs is not None
        return ChatRequest(
            model=req.model,
            messages=messages,
            stream=req.stream,
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_output_tokens,
            logprobs=logprobs or None,
            top_logprobs=req.top_logprobs if logprobs else None,
            tools=tools or None,
            tool_choice=choice,
            parallel_tool_calls=req.parallel_tool_calls,
            response_format=response_format,
            metadata=req.metadata,
            user=req.user,
        )

    # ------------------------------------------------------------ answering

    def answer(self, req: ResponsesRequest, p: Prepared, convo: tuple[Message, ...], out: Writer) -> None:
        headers = self.c.submit(p, {})
        if req.stream:
            _Stream(self, req, p, convo, out, headers).run()
            return
        done = None
        for event in self.c.events(p, out):
            done = event if isinstance(event, Done) else None
        self.finish(req, p, convo, done)
        headers["Server-Timing"] = server_timing(done)
        items = self.items(p, done)
        out.send_json(200, encode(self.response(req, p, "completed", items, done)), headers)

    def finish(self, req: ResponsesRequest, p: Prepared, convo: tuple[Message, ...], done: Done) -> None:
        """Record the step and keep the conversation for `previous_response_id` (before the client sees it)."""
        self.c.record(p, done)
        if req.store is not False:
            self.store.put(p.id, convo + (reply_of(done),))

    def items(self, p: Prepared, done: Done) -> list[OutputItem]:
        out: list[OutputItem] = []
        if done.content or not done.calls:
            text = OutputTextOut(text=done.content or "")
            if p.req.logprobs:
                visible = len(done.output_ids) - (1 if done.eos else 0)
                text.logprobs = self.logprobs(done.output_ids[:visible], done.logprobs[:visible], done.top[:visible])
            out.append(MessageOut(id=new_id("msg"), status=_item_status(done), content=[text]))
        out += [call_item(c, "completed") for c in done.calls]
        return out

    def response(self, req: ResponsesRequest, p: Prepared, status: str, items: list[OutputItem], done: Done | None,
                 error: ApiError | None = None) -> ResponseObject:
        usage = incomplete = None
        if done is not None:
            prompt, n = done.timings.prompt_tokens, len(done.output_ids)
            usage = ResponseUsage(
                input_tokens=prompt,
                input_tokens_details=InputTokensDetails(cached_tokens=done.timings.cached_tokens),
                output_tokens=n,
                output_tokens_details=OutputTokensDetails(),
                total_tokens=prompt + n,
            )
            if done.finish_reason == "length":
                status, incomplete = "incomplete", IncompleteDetails(reason="max_output_tokens")
        fmt = req.text.format if req.text is not None and req.text.format is not None else None
        return ResponseObject(
            id=p.id,
            created_at=p.created,
            status=status,
            error=ResponseErrorOut(code=error.code or "server_error", message=error.message) if error else None,
            incomplete_details=incomplete,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            model=req.model,
            output=items,
            parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            previous_response_id=req.previous_response_id,
            store=req.store is not False,
            temperature=p.sampling.temperature,
            text={"format": msgspec.to_builtins(fmt) if fmt else {"type": "text"}},
            tool_choice=msgspec.to_builtins(req.tool_choice) if req.tool_choice is not None else ("auto" if req.tools else "none"),
            tools=msgspec.to_builtins(req.tools or []),
            top_p=p.sampling.top_p,
            usage=usage,
            user=req.user,
            metadata=req.metadata or {},
        )

    def logprobs(self, ids: list[int], lps: list[float], tops: list) -> list[Logprob]:
        piece = self.c.token_piece
        out = []
        for i, lp, top in zip(ids, lps, tops or [[]] * len(ids)):
            tok, raw = piece(i)
            alts = [{"token": t, "bytes": b, "logprob": v} for j, v in top for t, b in [piece(j)]]
            out.append(Logprob(token=tok, bytes=raw, logprob=lp, top_logprobs=alts))
        return out


def call_item(call, status: str, arguments: str | None = None) -> FunctionCallOut:
    return FunctionCallOut(
        id="fc_" + call.id.removeprefix("call_"), call_id=call.id, name=call.name,
        arguments=call.arguments if arguments is None else arguments, status=status,
    )


def _item_status(done: Done) -> str:
    return "incomplete" if done.finish_reason == "length" else "completed"


class _Stream:
    """One streamed response: ``response.created`` … output items … ``response.completed``."""

    def __init__(self, api: Responses, req: ResponsesRequest, p: Prepared, convo, out: Writer, headers: dict[str, str]):
        self.api, self.req, self.p, self.convo, self.out, self.headers = api, req, p, convo, out, headers
        self.seq = 0
        self.items: list[OutputItem] = []
        self.message: MessageOut | None = None  # the message item being streamed
        self.text: list[str] = []
        self.lps: list[Logprob] = []
        self.pending: list[bytes] = []

    def send(self, event) -> None:
        event.sequence_number = self.seq
        self.seq += 1
        self.pending.append(b"event: " + event.type.encode() + b"\ndata: " + encode(event) + b"\n\n")

    def flush(self) -> None:
        # The events one engine event causes go out in one write (fewer syscalls and packets).
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            self.out.send_event(data)

    def run(self) -> None:
        api, p = self.api, self.p
        try:
            try:
                self.out.start_stream(self.headers)
            except OSError:
                raise ClientGone() from None
            shell = api.response(self.req, p, "in_progress", [], None)
            self.send(ResponseEvent(type="response.created", sequence_number=0, response=shell))
            self.send(ResponseEvent(type="response.in_progress", sequence_number=0, response=shell))
            self.flush()
            try:
                for event in api.c.events(p, self.out):
                    if isinstance(event, Started):
                        continue
                    self.delta(event.tail if isinstance(event, Done) else event)
                    if isinstance(event, Done):
                        self.done(event)
                    self.flush()
            except ApiError as e:
                p.gen.cancel()
                if e.status != 499:
                    failed = api.response(self.req, p, "failed", self.items, None, error=e)
                    self.send(ResponseEvent(type="response.failed", sequence_number=0, response=failed))
                    self.flush()
        except ClientGone:
            p.gen.cancel()

    def delta(self, delta: Delta) -> None:
        if delta.content:
            self.open_message()
            lps = []
            if self.p.req.logprobs and delta.ids:
                lps = self.api.logprobs(delta.ids, delta.logprobs, delta.top)
                self.lps += lps
            self.text.append(delta.content)
            self.send(TextDeltaEvent(sequence_number=0, item_id=self.message.id, output_index=len(self.items),
                                     delta=delta.content, logprobs=lps))
        for call in delta.calls:
            self.close_message("completed")
            index = len(self.items)
            item = call_item(call, "in_progress", arguments="")
            self.send(ItemEvent(type="response.output_item.added", sequence_number=0, output_index=index, item=item))
            self.send(ArgumentsDeltaEvent(sequence_number=0, item_id=item.id, output_index=index, delta=call.arguments))
            self.send(ArgumentsDoneEvent(sequence_number=0, item_id=item.id, output_index=index, arguments=call.arguments))
            item = call_item(call, "completed")
            self.items.append(item)
            self.send(ItemEvent(type="response.output_item.done", sequence_number=0, output_index=index, item=item))

    def open_message(self) -> None:
        if self.message is not None:
            return
        self.message = MessageOut(id=new_id("msg"), status="in_progress", content=[])
        index = len(self.items)
        self.send(ItemEvent(type="response.output_item.added", sequence_number=0, output_index=index, item=self.message))
        self.send(PartEvent(type="response.content_part.added", sequence_number=0, item_id=self.message.id,
                            output_index=index, part=OutputTextOut(text="")))

    def close_message(self, status: str) -> None:
        if self.message is None:
            return
        index, text = len(self.items), "".join(self.text)
        part = OutputTextOut(text=text)
        if self.p.req.logprobs:
            part.logprobs = self.lps
        mid = self.message.id
        self.send(TextDoneEvent(sequence_number=0, item_id=mid, output_index=index, text=text, logprobs=self.lps))
        self.send(PartEvent(type="response.content_part.done", sequence_number=0, item_id=mid, output_index=index, part=part))
        item = MessageOut(id=mid, status=status, content=[part])
        self.items.append(item)
        self.send(ItemEvent(type="response.output_item.done", sequence_number=0, output_index=index, item=item))
        self.message, self.text, self.lps = None, [], []

    def done(self, done: Done) -> None:
        if not self.items and self.message is None:
            self.open_message()  # an empty answer is still one (empty) message, as without streaming
        self.close_message(_item_status(done))
        self.api.finish(self.req, self.p, self.convo, done)
        final = self.api.response(self.req, self.p, "completed", self.items, done)
        kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
        self.send(ResponseEvent(type=kind, sequence_number=0, response=final))
