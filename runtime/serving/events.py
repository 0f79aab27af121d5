"""What HTTP threads and the model thread exchange: plain Python, never an `mx.array`.

The HTTP thread builds a `GenRequest` and reads its `events` queue: one `Started`, then
`Delta`s (streaming only), then `Done` or `Failed`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from ..contracts.trajectory import Timings
from .assembler import Call, CallPart
from .protocol import ApiError

TopLogprobs = list[tuple[int, float]]


@dataclass
class GenRequest:
    """One generation, as the HTTP thread prepared it (no arrays)."""

    id: str
    key: str  # model version key from `Registry.acquire` (held until done)
    model: str  # the name the client asked for, for metrics
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: bool = False  # split `<tool_call>` blocks out of the text
    top_logprobs: int = 0
    stream: bool = False
    logit_bias: dict[int, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    constraint: Any = None  # a grammar logits processor; called in the model thread only
    parse: Callable[[str], list] | None = None
    # Deferred tools: function name -> the schema text the grammar feeds after its name.
    inserts: dict[str, str] | None = None
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Ask the model thread to drop this request (client gone); it frees the slot."""
        self.cancelled.set()


@dataclass
class Started:
    prompt_tokens: int
    cached_tokens: int


@dataclass
class Delta:
    content: str
    calls: list[Call]
    ids: list[int]
    logprobs: list[float]
    top: list[TopLogprobs]
    # Tool calls streamed as decoded (grammar-constrained requests): id + name, then
    # argument fragments. `calls` still carries each call once complete.
    parts: list[CallPart] = field(default_factory=list)


@dataclass
class Done:
    finish_reason: str
    content: str | None
    calls: list[Call]
    output_ids: list[int]
    logprobs: list[float]
    top: list[TopLogprobs]
    # Tokens after the last Delta (streaming): ids/logprobs not yet sent.
    tail: Delta
    timings: Timings
    eos: bool
    # Indices into output_ids of tokens the grammar forced (fed, not sampled).
    forced: list[int] = field(default_factory=list)
    # Characters of output text after each output id (to place fed text among the ids).
    text_end: list[int] = field(default_factory=list)


@dataclass
class Failed:
    error: ApiError
