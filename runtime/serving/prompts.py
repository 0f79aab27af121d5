"""Chat messages → prompt token ids, reusing the ids a session already has.

The template is the model's own when it has a tools section, else TinyGPT's tool-aware
ChatML template. An agent resends the whole conversation every turn; rendering it and
tokenizing from scratch could produce different ids for the earlier turns than the ones
the model actually saw and sampled (a BPE merge across a turn boundary, a reply the
model tokenized unusually). So when the new text extends the previous turn's
prompt + output *as text*, the prompt is the previous ids plus only the new suffix
tokenized; otherwise the step is flagged `prefix_mismatch` and tokenized afresh.

Runs in HTTP threads: tokenizers only, no arrays. The tokenizer is shared with other
threads, so calls into it are serialised by one lock (tokenizing is fast; the Rust
tokenizer raises "Already borrowed" if two threads race on it).
"""

from __future__ import annotations

import importlib.resources
import threading
from dataclasses import dataclass

import jinja2

from .protocol import ApiError, Message, Tool

_lock = threading.Lock()


def tools_template() -> str:
    """TinyGPT's packaged tool-aware ChatML template."""
    files = importlib.resources.files("tinygpt.runtime.models")
    return files.joinpath("templates/chatml_tools.jinja").read_text(encoding="utf-8")


# How TinyGPT's packaged template begins (model conversions copy it into tokenizer_config.json).
_TINYGPT_TEMPLATE_HEAD = "{#- A tool-aware ChatML template (Qwen3 style)"


def has_tools_section(template: str | None) -> bool:
    # The template branches on the `tools` variable when it can render tool definitions.
    return bool(template) and "tools" in template and ("tool_call" in template or "tool_calls" in template)


@dataclass
class PriorTurn:
    """What a session's previous step fed and sampled, to continue its token stream."""

    prompt_ids: list[int]
    prompt_text: str
    output_ids: list[int]
    output_text: str


@dataclass
class Prompt:
    text: str
    ids: list[int]
    # Tokens taken verbatim from the previous step (prompt + output), 0 for a first turn.
    reused: int = 0
    prefix_mismatch: bool = False


class ChatPrompts:
    """Renders and tokenizes chat requests for one tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        own = getattr(tokenizer, "chat_template", None)
        if own and own.startswith(_TINYGPT_TEMPLATE_HEAD):
            # A copy of TinyGPT's template written by an older conversion: the packaged one
            # renders the same turns and knows what it has learned since (the tool index).
            own = None
        self.template = own if has_tools_section(own) else tools_template()
        self.own_template = self.template is own

    def render(self, messages: list[Message], tools: list[Tool] | None, tool_mode: str = "full") -> str:
        """The prompt text (with the assistant generation header).

        `tool_mode` "deferred": the tools as a one-line index, and earlier calls with the
        schema that was fed after their name (runtime/grammar/deferred.py), so the text
        of earlier turns is exactly what the model saw and sampled.
        """
        extra: dict = {}
        fed: dict[str, str] = {}
        tool_defs = [{"type": "function", "function": _function(t)} for t in tools] if tools else None
        if tool_mode == "deferred" and tool_defs:
            if "tool_index" not in self.template:
                raise ApiError(400, "tool_mode 'deferred' needs a chat template with a tool index (TinyGPT's); this "
                               "model's own template renders tools its own way (use tool_mode 'full')", param="tool_mode")
            from tinygpt.runtime.grammar.deferred import index_line, insertions

            extra["tool_index"] = [index_line(t) for t in tool_defs]
            fed, tool_defs = insertions(tool_defs), None
        convo = [self._message(m, fed) for m in messages]
        try:
            with _lock:
                return self.tokenizer.apply_chat_template(
                    convo,
                    tools=tool_defs,
                    chat_template=self.template,
                    add_generation_prompt=True,
                    tokenize=False,
                    **extra,
                )
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
            raise ApiError(400, f"the chat template cannot render these messages: {e}", param="messages") from None

    def encode(self, text: str) -> list[int]:
        with _lock:
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        with _lock:
            # No clean-up: " ." must stay " ." so text and ids stay interchangeable.
            return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def build(self, text: str, prior: PriorTurn | None) -> Prompt:
        """Token ids for `text`, continuing `prior`'s ids where the text allows."""
        if prior is None:
            return Prompt(text, self.encode(text))
        full_ids = prior.prompt_ids + prior.output_ids
        full_text = prior.prompt_text + prior.output_text
        for head_ids, head_text, mismatch in (
            (full_ids, full_text, False),
            (prior.prompt_ids, prior.prompt_text, True),
        ):
            if head_text and text.startswith(head_text):
                ids = head_ids + self.encode(text[len(head_text) :])
                # A tokenizer that is not byte-level may not split text this freely: verify.
                if self.decode(ids) == text:
                    return Prompt(text, ids, reused=len(head_ids), prefix_mismatch=mismatch)
        return Prompt(text, self.encode(text), prefix_mismatch=True)

    @staticmethod
    def _message(m: Message, fed: dict[str, str]) -> dict:
        # Templates know system/user/assistant/tool; OpenAI's "developer" is a system turn.
        out: dict = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.name is not None:
            out["name"] = m.name
        if m.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": _call(c.function.name, c.function.arguments, fed)}
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            out["tool_call_id"] = m.tool_call_id
        return out


def _call(name: str, arguments: str, fed: dict[str, str]) -> dict:
    # A deferred call renders with the schema that was fed after its name (`fed_schema`).
    out = {"name": name, "arguments": arguments}
    if name in fed:
        out["fed_schema"] = fed[name]
    return out


def _function(tool: Tool) -> dict:
    f = tool.function
    out: dict = {"name": f.name}
    if f.description is not None:
        out["description"] = f.description
    out["parameters"] = f.parameters if f.parameters is not None else {"type": "object", "properties": {}}
    return out
