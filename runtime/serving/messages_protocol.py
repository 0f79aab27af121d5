"""The Anthropic Messages wire format (`POST /v1/messages`): request Structs, content blocks, errors.

Strict like the OpenAI side: an unknown field, an image block or a server tool is a 400
naming it. ``cache_control`` is accepted on every block and has no effect: the runtime's
prefix cache reuses any earlier prompt by itself. Errors use Anthropic's shape,
``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .protocol import ApiError, PositiveInt, Probability, _Request, _Response

# Anthropic's error type for each status the runtime answers.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(e: ApiError) -> bytes:
    """An ApiError in Anthropic's shape."""
    kind = ERROR_TYPES.get(e.status, "invalid_request_error" if e.status < 500 else "api_error")
    return msgspec.json.encode({"type": "error", "error": {"type": kind, "message": e.message}})


# ---------------------------------------------------------------- request


class CacheControl(_Request, kw_only=True):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Request, tag_field="type", tag="text", kw_only=True):
    text: str
    cache_control: CacheControl | None = None
    citations: Annotated[list[Any], Meta(max_length=0)] | None = None


class ToolUseBlock(_Request, tag_field="type", tag="tool_use", kw_only=True):
    id: Annotated[str, Meta(min_length=1, max_length=200)]
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Request, tag_field="type", tag="tool_result", kw_only=True):
    tool_use_id: Annotated[str, Meta(min_length=1, max_length=200)]
    content: str | list[TextBlock] = ""
    is_error: bool = False
    cache_control: CacheControl | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)


Block = TextBlock | ToolUseBlock | ToolResultBlock


class MessageParam(_Request, kw_only=True):
    role: Literal["user", "assistant"]
    # Images, documents and thinking blocks fail with "Invalid value 'image'".
    content: str | list[Block]


class ToolParam(_Request, kw_only=True):
    # Server tools (bash_..., web_search_..., text_editor_...) fail on their `type`.
    type: Literal["custom"] | None = None
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    strict: bool | None = None


class ToolChoiceAuto(_Request, tag_field="type", tag="auto", kw_only=True):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(_Request, tag_field="type", tag="any", kw_only=True):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(_Request, tag_field="type", tag="tool", kw_only=True):
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(_Request, tag_field="type", tag="none", kw_only=True):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingDisabled(_Request, kw_only=True):
    # These models have no hidden reasoning channel: only "disabled" can be honoured.
    type: Literal["disabled"]


class Metadata(_Request, kw_only=True):
    user_id: str | None = None


class _Conversation(_Request, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingDisabled | None = None


class MessagesRequest(_Conversation, kw_only=True):
    """`POST /v1/messages` body."""

    max_tokens: PositiveInt
    stream: bool = False
    stop_sequences: Annotated[list[str], Meta(max_length=4)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: Probability | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None


class CountTokensRequest(_Conversation, kw_only=True):
    """`POST /v1/messages/count_tokens` body."""


# ---------------------------------------------------------------- response


class TextOut(_Response, kw_only=True):
    type: str = "text"
    text: str


class ToolUseOut(_Response, kw_only=True):
    type: str = "tool_use"
    id: str
    name: str
    input: Any


ContentOut = TextOut | ToolUseOut


class UsageOut(_Response, kw_only=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageOut(_Response, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    content: list[ContentOut]
    model: str
    stop_reason: str | None
    stop_sequence: str | None
    usage: UsageOut


class DeltaUsage(_Response, kw_only=True):
    output_tokens: int
    input_tokens: int
    cache_read_input_tokens: int


class StopDelta(_Response, kw_only=True):
    stop_reason: str
    stop_sequence: str | None
