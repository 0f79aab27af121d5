"""Grammar-constrained decoding: JSON schemas and tool calls compiled to token masks.

The engine's entry points:

    info = TokenizerInfo.from_tokenizer(tokenizer, vocab_size=model_vocab_size)
    constraint = build_constraint(info, tools=..., tool_choice=..., parallel_tool_calls=...,
                                  response_format=...)   # None: unconstrained
    generate_step(..., logits_processors=[constraint])   # or constraint.advance / allowed
    calls = parse_tool_calls(text)              # or split_tool_calls: (content, calls)
    warm_up(info)                               # optional: precompile json_object

Every request problem (unsupported schema keyword, invalid schema, unknown tool name,
bad response_format) raises GrammarError with a message naming it: answer 400.
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

# Compiled indices, shared by all requests and tokenizers (keys include the tokenizer).
grammar_cache = GrammarCache(maxsize=64)

_SPECS: OrderedDict[str, GrammarSpec | None] = OrderedDict()
_SPECS_LOCK = threading.Lock()
_SPECS_MAX = 256


def grammar_spec(tools=None, tool_choice=None, parallel_tool_calls=True, response_format=None) -> GrammarSpec | None:
    """The grammar a request asks for (memoized by the request's canonical JSON)."""
    # The schema walkers recurse per level: a schema nested hundreds deep is a 400, not a RecursionError.
    if max(value_depth(tools), value_depth(response_format)) > MAX_DEPTH:
        raise GrammarError(f"tools/response_format are nested more than {MAX_DEPTH} levels deep")
    try:
        key_text = json.dumps(
            [tools, tool_choice, bool(parallel_tool_calls), response_format],
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
    spec = grammar_for(tools, tool_choice, parallel_tool_calls, response_format)
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
) -> Constraint | None:
    """A fresh Constraint for one request, or None when decoding is unconstrained.

    `tool_choice`: "none" | "auto" | "required" | {"type": "function", "function":
    {"name": ...}} (default: "auto" with tools). `response_format`: None |
    {"type": "text"} | {"type": "json_object"} | {"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": true}}. The compiled index is cached by
    (grammar, tokenizer), so a repeated tool set costs a dictionary lookup.
    """
    spec = grammar_spec(tools, tool_choice, parallel_tool_calls, response_format)
    if spec is None:
        return None
    grammar = grammar_cache.get(spec.regex, info)
    return Constraint(grammar, spec.kind, spec.counts, parallel_calls=spec.parallel_calls)


def warm_up(info: TokenizerInfo) -> None:
    """Compile the grammar that does not depend on the request, response_format
    json_object, ahead of the first request that needs it.

    Its index is the largest (any JSON object, nested three levels): seconds on a 49k
    vocabulary. Call it once per tokenizer, e.g. from a background thread at model load.
    """
    build_constraint(info, response_format={"type": "json_object"})


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
