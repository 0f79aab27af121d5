"""The OpenAI Responses wire format (`POST /v1/responses`): request Structs, output items, stream events.

Requests are strict like chat completions' (an unknown field is a 400 naming it); the
fields an agent SDK sends that have no effect here are accepted only with values that
ask for nothing (``reasoning: {}``, ``truncation: "disabled"``, ``background: false``).
Input items arrive as a list whose entries need not carry ``type`` (a bare
``{"role", "content"}`` is a message), so each item is decoded on its own by
`decode_items`. Output items and events encode exactly the keys the `openai` client reads.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from .protocol import ApiError, PositiveInt, Probability, _Request, _Response

ToolName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]

# ---------------------------------------------------------------- input items


class InputText(_Request, tag_field="type", tag="input_text", kw_only=True):
    text: str


class OutputText(_Request, tag_field="type", tag="output_text", kw_only=True):
    """An earlier answer's text, sent back as input (annotations / logprobs are echoed, ignored)."""

    text: str
    annotations: Annotated[list[Any], Meta(max_length=0)] = []
    logprobs: list[Any] | None = None


class MessageItem(_Request, kw_only=True):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    # Images, files and audio fail with "Invalid value 'input_image'".
    content: str | list[InputText | OutputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(_Request, kw_only=True):
    type: Literal["function_call"]
    call_id: Annotated[str, Meta(min_length=1, max_length=200)]
    name: str
    # JSON text as the model wrote it; kept verbatim so the turn re-renders to its sampled ids.
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Request, kw_only=True):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Meta(min_length=1, max_length=200)]
    output: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem
ITEM_KINDS: dict[str, type[Struct]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


class _Kind(Struct):
    type: str = "message"


_kind = msgspec.json.Decoder(_Kind)
_item_decoders = {k: msgspec.json.Decoder(v) for k, v in ITEM_KINDS.items()}


def decode_items(raws: list[msgspec.Raw]) -> list[Item]:
    """Each raw input item decoded by its ``type``; a problem is a 400 naming ``input[i]``."""
    items = []
    for i, raw in enumerate(raws):
        where = f"input[{i}]"
        try:
            kind = _kind.decode(raw).type
            decoder = _item_decoders.get(kind)
            if decoder is None:
                raise ApiError(
                    400,
                    f"{where}: item type {kind!r} is not supported; use message, function_call or function_call_output",
                    param=where,
                )
            items.append(decoder.decode(raw))
        except msgspec.ValidationError as e:
            raise ApiError(400, f"invalid request: {str(e).replace('`$', f'`$.{where}')}", param=where) from None
        except msgspec.DecodeError as e:
            raise ApiError(400, f"invalid request: {where}: {e}", param=where) from None
    return items


# ---------------------------------------------------------------- request


class FunctionTool(_Request, kw_only=True):
    # Hosted tools (web_search, file_search, computer, mcp, ...) fail with "Expected `'function'`".
    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChosenFunction(_Request, kw_only=True):
    type: Literal["function"]
    name: str


class TextFormat(_Request, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str = "response"
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextConfig(_Request, kw_only=True):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


class NoReasoning(_Request, kw_only=True):
    """`reasoning` asks for nothing: these models do not reason in a hidden channel."""

    effort: Literal["none"] | None = None
    summary: None = None


class ResponsesRequest(_Request, kw_only=True):
    """`POST /v1/responses` body."""

    model: Annotated[str, Meta(min_length=1)]
    input: str | Annotated[list[msgspec.Raw], Meta(min_length=1)]
    instructions: str | None = None
    previous_response_id: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ChosenFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    max_output_tokens: PositiveInt | None = None
    stream: bool = False
    store: bool | None = None
    include: list[Literal["message.output_text.logprobs"]] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    # `metadata.session_id` groups requests into one trajectory (as does the X-TinyGPT-Session header).
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # Prefix caching is automatic here; the key is accepted and has no effect.
    prompt_cache_key: str | None = None
    truncation: Literal["disabled"] | None = None
    reasoning: NoReasoning | None = None
    background: Literal[False] | None = None
    service_tier: Literal["auto", "default"] | None = None


# ---------------------------------------------------------------- output


class Logprob(_Response, kw_only=True):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[Any] = []


class OutputTextOut(_Response, kw_only=True):
    type: str = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Logprob] | UnsetType = UNSET


class MessageOut(_Response, kw_only=True):
    type: str = "message"
    id: str
    status: str
    role: str = "assistant"
    content: list[OutputTextOut]


class FunctionCallOut(_Response, kw_only=True):
    type: str = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = MessageOut | FunctionCallOut


class InputTokensDetails(_Response, kw_only=True):
    cached_tokens: int


class OutputTokensDetails(_Response, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(_Response, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(_Response, kw_only=True):
    reason: str


class ResponseErrorOut(_Response, kw_only=True):
    code: str
    message: str


class ResponseObject(_Response, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: str
    error: ResponseErrorOut | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: Any
    tools: list[Any]
    top_p: float
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = {}


# ---------------------------------------------------------------- stream events


class ResponseEvent(_Response, kw_only=True):
    type: str
    sequence_number: int
    response: ResponseObject


class ItemEvent(_Response, kw_only=True):
    type: str
    sequence_number: int
    output_index: int
    item: OutputItem


class PartEvent(_Response, kw_only=True):
    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputTextOut


class TextDeltaEvent(_Response, kw_only=True):
    type: str = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Logprob] = []


class TextDoneEvent(_Response, kw_only=True):
    type: str = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[Logprob] = []


class ArgumentsDeltaEvent(_Response, kw_only=True):
    type: str = "response.function_call_arguments.delta"
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Response, kw_only=True):
    type: str = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(_Response, kw_only=True):
    type: str = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None

