"""The OpenAI wire format: request bodies decoded straight into Structs, responses encoded from them.

Requests are strict (unknown fields are a 400 naming the field): a setting the runtime
cannot honour must not be silently ignored. Fields the official `openai` client echoes
back when an agent appends a returned message to its history (``refusal``,
``annotations``, ...) are accepted when empty. Responses use ``UNSET`` for keys that
OpenAI omits, so the client's models parse them exactly as they parse OpenAI's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType


class ApiError(Exception):
    """An error answered as an OpenAI error object: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return msgspec.json.encode(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


class _Request(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of request Structs: strict (each subclass is keyword-only: that option is not inherited)."""


# ---------------------------------------------------------------- requests


class ContentPart(_Request, kw_only=True):
    # Only text parts: an image part fails with "Invalid enum value 'image_url'".
    type: Literal["text"]
    text: str


class FunctionCall(_Request, kw_only=True):
    name: str
    # JSON text, as OpenAI sends it; kept verbatim so re-rendering reproduces the sampled ids.
    arguments: str


class ToolCallIn(_Request, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    # Echoed back by the openai client with the message it returned; must be empty.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionDef(_Request, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request, kw_only=True):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Request, kw_only=True):
    name: str


class NamedToolChoice(_Request, kw_only=True):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Request, kw_only=True):
    name: str = "response"
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(_Request, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Request, kw_only=True):
    include_usage: bool = False


Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Meta(ge=1)]


class ChatRequest(_Request, kw_only=True):
    """`POST /v1/chat/completions` body."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    n: Annotated[int, Meta(ge=1, le=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    # `metadata.session_id` groups requests into one trajectory (as does the X-TinyGPT-Session header).
    # OpenAI's limits (16 pairs, 64-char keys, 512-char values): it is recorded on every step.
    metadata: Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)] | None = None
    user: str | None = None
    store: bool | None = None


class FeedbackRequest(_Request, kw_only=True):
    """`POST /v1/trajectories/{id}/feedback` body: a reward and/or a label, optionally for one step."""

    reward: float | None = None
    label: str | None = None
    step: Annotated[int, Meta(ge=0)] | None = None
    source: str = "client"
    comment: str = ""


class HindsightRequest(_Request, kw_only=True):
    """`POST /v1/trajectories/{id}/hindsight` body: the same sampled turns under another opening.

    `original` is the opening the trajectory's first request sent (checked: it must render
    to that step's prompt ids exactly); `messages` replaces it: a request the episode's
    outcome achieves, as the client's own checker decided (`reward`). The runtime records a
    new trajectory whose sampled ids are the original's, id for id.
    """

    original: Annotated[list[Message], Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(min_length=1, max_length=256)]
    reward: Annotated[float, Meta(ge=0.0, le=1.0)]
    source: Annotated[str, Meta(max_length=64)] = "client"
    comment: Annotated[str, Meta(max_length=500)] = ""


class AdapterLoad(_Request, kw_only=True):
    """`POST /admin/adapters`: load (or hot-swap to) a version of a specialist."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    path: str
    # Default: the package's manifest.json version, else the adapter's digest prefix.
    version: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-+]+$")] | None = None
    # Keep the previous version servable as "name@old" instead of retiring it.
    keep_previous: bool = False


# ---------------------------------------------------------------- responses


class _Response(Struct, omit_defaults=False):
    """Base of response Structs."""


class TopLogprobOut(_Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(_Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(_Response, kw_only=True):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class FunctionOut(_Response, kw_only=True):
    name: str
    arguments: str


class ToolCallOut(_Response, kw_only=True):
    id: str
    type: str = "function"
    function: FunctionOut


class ResponseMessage(_Response, kw_only=True):
    role: str = "assistant"
    content: str | None = None
    refusal: None = None
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class Choice(_Response, kw_only=True):
    index: int = 0
    message: ResponseMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class PromptTokensDetails(_Response, kw_only=True):
    cached_tokens: int


class Usage(_Response, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletion(_Response, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionDelta(_Response, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str = ""


class ToolCallDelta(_Response, kw_only=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: FunctionDelta


class Delta(_Response, kw_only=True):
    role: str | UnsetType = UNSET
    content: str | None | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChunkChoice(_Response, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Response, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(_Response, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "tinygpt"
    # TinyGPT extensions (the openai client keeps unknown fields).
    root: str | UnsetType = UNSET
    version: str | UnsetType = UNSET
    digest: str | UnsetType = UNSET
    # The base model's serving dtype and device (bfloat16 on a GPU, float32 on the CPU).
    dtype: str | UnsetType = UNSET
    device: str | UnsetType = UNSET


class ModelList(_Response, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode(body: bytes, kind: type[Struct]) -> Any:
    """Decode a request body into `kind`; any problem is a 400 naming the field."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        param = str(e).rpartition("at `")[2].rstrip("`") if "at `" in str(e) else None
        raise ApiError(400, f"invalid request: {e}", param=param) from None
    except msgspec.DecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except UnicodeDecodeError as e:
        # msgspec raises this (not a DecodeError) for bytes that are not UTF-8.
        raise ApiError(400, f"request body is not valid UTF-8 JSON: {e.reason} at byte {e.start}", code="invalid_json") from None
    except RecursionError:
        # Bodies are depth-checked before this (guard.check_body); this is the backstop.
        raise ApiError(400, "request body is nested too deeply", code="too_deep") from None


encode = msgspec.json.Encoder().encode
