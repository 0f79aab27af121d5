"""Grammar-constrained decoding on llguidance: JSON schemas and tool calls as token masks.

The engine's entry points:

    info = TokenizerInfo.from_tokenizer(tokenizer, vocab_size=model_vocab_size)
    constraint = build_constraint(info, tools=..., tool_choice=..., parallel_tool_calls=...,
                                  response_format=...)   # None: unconstrained
    generate_step(..., logits_processors=[constraint])   # or constraint.advance / allowed
    constraint.forced()                          # tokens the grammar forces (fast-forward)
    calls = parse_tool_calls(text)              # or split_tool_calls: (content, calls)
    warm_up(info)                               # at model load: json_object, the envelope

This package writes the grammar (requests.py: the tool-call envelope in Lark over
`%json` schemas; schemas.py: normalization), caches compiled matchers (compiled.py) and
applies masks (constraint.py); llguidance compiles and walks it. Every request problem
(a schema keyword llguidance cannot enforce, an invalid schema, an unknown tool name, a
bad response_format, a grammar over the parser limits) raises GrammarError with a
message naming it: answer 400.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

from ..contracts.nesting import MAX_DEPTH, value_depth
from .compiled import CompiledGrammar, GrammarCache
from .constraint import Constraint
from .errors import GrammarError
from .requests import GrammarSpec, grammar_for
from .tool_calls import ParsedCall, parse_tool_calls, split_tool_calls
from .vocabulary import TokenizerInfo

# Compiled matchers, shared by all requests and tokenizers (keys include the tokenizer).
grammar_cache = GrammarCache(maxsize=256)

_SPECS: OrderedDict[str, GrammarSpec | None] = OrderedDict()
_SPECS_LOCK = threading.Lock()
_SPECS_MAX = 256


def grammar_spec(tools=None, tool_choice=None, parallel_tool_calls=True, response_format=None, deferred=False) -> GrammarSpec | None:
    """The grammar a request asks for (memoized by the request's canonical JSON)."""
    # The schema walkers recurse per level: a schema nested hundreds deep is a 400, not a RecursionError.
    if max(value_depth(tools), value_depth(response_format)) > MAX_DEPTH:
        raise GrammarError(f"tools/response_format are nested more than {MAX_DEPTH} levels deep")
    try:
        key_text = json.dumps(
            [tools, tool_choice, bool(parallel_tool_calls), response_format, bool(deferred)],
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"tools/response_format must be plain JSON: {exc}") from None
    key = hashlib.sha256(key_text.encode("utf-8")).hexdigest()
    with _SPECS_LOCK:
        if key in _SPECS:
            _SPECS.move_to_end(key)
            return _SPECS[key]
    spec = grammar_for(tools, tool_choice, parallel_tool_calls, response_format, deferred)
    with _SPECS_LOCK:
        _SPECS[key] = spec
        while len(_SPECS) > _SPECS_MAX:
            _SPECS.popitem(last=False)
    return spec


def build_constraint(
    info: TokenizerInfo,
    *,
    tools=None,
    tool_choice=None,
    parallel_tool_calls=True,
    response_format=None,
    deferred=False,
    on_compile=None,
) -> Constraint | None:
    """A fresh Constraint for one request, or None when decoding is unconstrained.

    `tool_choice`: "none" | "auto" | "required" | {"type": "function", "function":
    {"name": ...}} (default: "auto" with tools). `response_format`: None |
    {"type": "text"} | {"type": "json_object"} | {"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": true}}. `deferred` (deferred.py): a chosen
    tool's schema is a forced literal between its name and its arguments. The compiled
    matcher is cached by (grammar, tokenizer), so a repeated tool set costs a lookup and a copy.
    `on_compile(seconds)` is called when this request's grammar had to be compiled.
    """
    spec = grammar_spec(tools, tool_choice, parallel_tool_calls, response_format, deferred)
    if spec is None:
        return None
    grammar = grammar_cache.get(spec.lark, info, on_compile=on_compile)
    return Constraint(grammar, spec.kind, parallel_calls=spec.parallel_calls)


# A one-function tool set: its envelope (the Lark around the schemas, the free-text
# lexemes) is what every tool request shares with it.
_WARM_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}


def warm_up(info: TokenizerInfo, on_compile=None) -> None:
    """Build what every constrained request needs ahead of the first one: the llguidance
    tokenizer (the slow part, ~0.5 s at 49k tokens), `json_object`, and the tool-call
    envelope under `auto` and `required`. Call it once per tokenizer at model load.
    """
    build_constraint(info, response_format={"type": "json_object"}, on_compile=on_compile)
    for choice in ("auto", "required"):
        build_constraint(info, tools=[_WARM_TOOL], tool_choice=choice, on_compile=on_compile)


__all__ = [
    "CompiledGrammar",
    "Constraint",
    "GrammarError",
    "GrammarSpec",
    "ParsedCall",
    "TokenizerInfo",
    "build_constraint",
    "grammar_cache",
    "grammar_spec",
    "parse_tool_calls",
    "split_tool_calls",
    "warm_up",
]
