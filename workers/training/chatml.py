"""Recorded ChatML prompts back into OpenAI messages + tools, and answers back into ChatML.

Sequence distillation asks a teacher to answer a row's prompt. A dataset row holds only
ids, but a ChatML prompt (TinyGPT's tool-aware template, runtime/models/templates/
chatml_tools.jinja, and SmolLM2's own) decodes into text that maps back onto the chat
request that produced it: the messages, and the tools listed in the system turn. With
those, a teacher behind the runtime's `/v1/chat/completions` (or a local teacher under
`tinygpt.runtime.grammar`) decodes under the same grammar constraint the runtime used.
"""

from __future__ import annotations

import json
import re

START, END = "<|im_start|>", "<|im_end|>"
TOOLS_HEADER = "\n\n# Tools\n\n"
_TOOLS = re.compile(r"<tools>\n(.*?)\n</tools>", re.S)
TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)
_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.S)


def parse_prompt(text: str) -> tuple[list[dict], list[dict] | None] | None:
    """(messages, tools) of a ChatML prompt ending in the assistant header; None if not ChatML."""
    if not text.startswith(START):
        return None
    turns = text.split(START)[1:]
    if not turns or turns[-1].strip() != "assistant":
        return None
    messages, tools, calls, last_ids = [], None, 0, []
    for turn in turns[:-1]:
        role, _, body = turn.partition("\n")
        if not body.endswith(END + "\n") and not body.endswith(END):
            return None
        body = body[: body.rindex(END)]
        if role == "system" and TOOLS_HEADER in body:
            body, _, section = body.partition(TOOLS_HEADER)
            found = _TOOLS.search(section)
            if found is None:
                return None
            try:
                tools = [{"type": "function", "function": json.loads(line)} for line in found.group(1).splitlines()]
            except json.JSONDecodeError:
                return None
        if role == "user" and body.lstrip().startswith("<tool_response>"):
            # One user turn of <tool_response> blocks is the template's rendering of tool messages.
            for i, content in enumerate(_RESPONSE.findall(body)):
                call_id = last_ids[i] if i < len(last_ids) else f"call_{calls + i}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
            continue
        if role == "assistant" and "<tool_call>" in body:
            content = body[: body.index("<tool_call>")].rstrip("\n")
            tool_calls = []
            for block in TOOL_CALL.findall(body):
                try:
                    call = json.loads(block)
                except json.JSONDecodeError:
                    return None
                tool_calls.append(
                    {
                        "id": f"call_{calls}",
                        "type": "function",
                        "function": {"name": call.get("name", ""), "arguments": json.dumps(call.get("arguments", {}))},
                    }
                )
                calls += 1
            messages.append({"role": "assistant", "content": content or None, "tool_calls": tool_calls})
            last_ids = [c["id"] for c in tool_calls]
            continue
        messages.append({"role": role, "content": body})
    return messages, tools


def render_answer(content: str | None, tool_calls: list[dict] | None) -> str:
    """An assistant message as the tool-aware template renders it (without the end token)."""
    text = content or ""
    for i, call in enumerate(tool_calls or []):
        fn = call.get("function", call)
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        if text or i:
            text += "\n"
        text += f'<tool_call>\n{{"name": "{fn["name"]}", "arguments": {arguments}}}\n</tool_call>'
    return text
