"""How a request's tools are shown to the model (runtime/grammar/deferred.py).

"full": every tool's JSON schema in the system prompt (the chat template's way).
"deferred": one line per tool in the prompt; a chosen tool's schema is fed after its name.
"""

from __future__ import annotations

from typing import Literal

ToolMode = Literal["full", "deferred"]
TOOL_MODES: tuple[str, ...] = ("full", "deferred")


def check_tool_mode(mode, where: str) -> str:
    """`mode` if it is a tool mode, else ValueError naming `where` and the choices."""
    if mode not in TOOL_MODES:
        raise ValueError(f"{where}: unknown tool mode {mode!r} (expected one of: {', '.join(TOOL_MODES)})")
    return mode
