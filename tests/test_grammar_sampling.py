"""Random-logit sampling under a constraint: every completed output parses and validates.

Also holds the helpers the other grammar tests share: the tiny byte-level BPE tokenizer
(tests/tiny_model.py) as a TokenizerInfo, a sampler that walks a constraint with random
logits and, after a budget, takes the shortest way to the end (so every run completes),
and a validator that checks formats strictly.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import re
import uuid

import jsonschema
import mlx.core as mx
import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from tests.tiny_model import EOS, train_tokenizer
from tinygpt.runtime.grammar import TokenizerInfo, build_constraint, parse_tool_calls

PADDED_VOCAB = 520  # the tiny tokenizer has 512 ids; the model pads its logits


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(), eos_token=EOS, pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """tests/tiny_model.py's byte-level BPE (512 ids) as a transformers tokenizer."""
    return _tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_info():
    """The tiny tokenizer as the grammar sees it, with logits padded to 520."""
    return TokenizerInfo.from_tokenizer(_tiny_tokenizer(), vocab_size=PADDED_VOCAB)


# After the random budget the walk heads for the end: EOS when allowed, else half the
# time the token that closes the most (a quote, a bracket) or the shortest, half the time
# any allowed token (so a string whose format needs, say, an "@" still gets one).
_CLOSERS = {b'"': 0, b"}": 1, b"]": 2, b'"}': 0, b'"]': 0, b"}}": 1}


def _toward_end(info: TokenizerInfo, allowed: np.ndarray, rng: np.random.Generator) -> int:
    def rank(token: int) -> tuple:
        piece = info.token_bytes[token] or b""
        return (_CLOSERS.get(piece, 3), len(piece), rng.random())

    return int(min(allowed, key=rank))


def sample(constraint, rng: np.random.Generator, *, budget: int = 120, eos_bias: float = 0.0) -> list[int]:
    """Token ids sampled under `constraint` from random logits, ending at EOS.

    For `budget` steps each allowed token is drawn from softmax(N(0, 1) logits) (EOS
    with `eos_bias` added); then the walk heads for the end (EOS, closers, short tokens).
    """
    info = constraint.grammar.info
    eos = set(info.eos_token_ids)
    out: list[int] = []
    for step in range(10_000):
        allowed = np.flatnonzero(constraint.allowed())
        assert allowed.size, f"dead end after {out}"
        if step < budget:
            logits = rng.normal(size=allowed.size) + np.where(np.isin(allowed, list(eos)), eos_bias, 0.0)
            token = int(allowed[np.argmax(logits - np.log(-np.log(rng.random(allowed.size))))])
        else:
            eos_here = [t for t in allowed if t in eos]
            if eos_here:
                token = int(eos_here[0])
            elif rng.random() < 0.5:
                token = _toward_end(info, allowed, rng)
            else:
                token = int(rng.choice(allowed))
        constraint.advance(token)
        if token in eos:
            return out
        out.append(token)
    raise AssertionError(f"sampling did not finish: {b''.join(info.token_bytes[t] or b'' for t in out[-200:])!r}")


def text_of(info: TokenizerInfo, ids: list[int]) -> str:
    """The exact text of `ids` from the grammar's own byte table."""
    return b"".join(info.token_bytes[i] for i in ids).decode("utf-8")


def _strict_formats() -> jsonschema.FormatChecker:
    """jsonschema's checker plus strict checks for formats whose optional libs are absent."""
    checker = jsonschema.FormatChecker()

    # RFC 3339 itself: "T"/"Z" in either case, a leap second 60 (fromisoformat refuses both).
    time_re = re.compile(r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d)")

    def rfc3339_time(value: str) -> bool:
        return time_re.fullmatch(value) is not None

    def full_date(value: str) -> bool:
        # Years 0000-9999 (fromisoformat has no year 0); leap years repeat every 400.
        if len(value) != 10 or not value[:4].isdigit():
            return False
        return bool(datetime.date.fromisoformat(f"{2000 + int(value[:4]) % 400:04d}{value[4:]}"))

    checks = {
        "date": full_date,
        "time": rfc3339_time,
        "date-time": lambda v: v[10:11] in ("T", "t") and rfc3339_time(v[11:]) and full_date(v[:10]),
        "uuid": lambda v: str(uuid.UUID(v)) == v.lower(),  # RFC 9562: hex digits in either case
        "ipv4": lambda v: bool(ipaddress.IPv4Address(v)),
        "ipv6": lambda v: bool(ipaddress.IPv6Address(v)),
        # RFC 5322 addr-spec, loosely: a local part and a (possibly dotless) domain.
        "email": lambda v: all(v.rpartition("@")[0::2]),
        "hostname": lambda v: all(0 < len(label) <= 63 for label in v.split(".")),
        # RFC 3986: a scheme, ":", then a (possibly empty) hier-part without spaces.
        "uri": lambda v: re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S*", v) is not None,
    }
    for name, check in checks.items():
        checker.checks(name, raises=(ValueError, TypeError))(check)
    return checker


STRICT_FORMATS = _strict_formats()


def assert_valid(value, schema) -> None:
    """`value` validates against `schema`, formats included."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls(schema, format_checker=STRICT_FORMATS).validate(value)


def assert_valid_calls(text: str, tools: list[dict], *, allow_text: bool = False) -> list:
    """Every tool call in `text` names a tool and has valid arguments; returns them."""
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    calls = parse_tool_calls(text)
    if not allow_text:
        blocks = text.split("\n<tool_call>")
        assert len(calls) == len(blocks), f"not only tool calls: {text!r}"
    for call in calls:
        assert call.name in schemas, call
        assert_valid(json.loads(call.arguments_json), schemas[call.name])
    return calls


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 24},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                "safe": {"type": "boolean"},
                "min_score": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            },
            "required": ["query", "limit"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, SEARCH]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "search_web"}}])
@pytest.mark.parametrize("parallel", [True, False])
def test_random_sampling_always_yields_valid_calls(tiny_info, choice, parallel):
    for seed in range(40):
        constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel)
        text = text_of(tiny_info, sample(constraint, np.random.default_rng(seed), eos_bias=-1.0))
        calls = assert_valid_calls(text, TOOLS)
        assert calls, text
        if isinstance(choice, dict):
            assert {c.name for c in calls} == {"search_web"}
        if not parallel:
            assert len(calls) == 1


def test_random_sampling_json_schema(tiny_info):
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 20},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3},
            "score": {"type": "number", "minimum": -1.5, "maximum": 2.25},
            "when": {"type": "string", "format": "date-time"},
            "owner": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}]},
        },
        "required": ["title", "score", "when"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "item", "schema": schema, "strict": True}}
    for seed in range(40):
        constraint = build_constraint(tiny_info, response_format=response_format)
        assert constraint.kind == "json_schema"
        text = text_of(tiny_info, sample(constraint, np.random.default_rng(seed)))
        assert_valid(json.loads(text), schema)


def test_random_sampling_json_object(tiny_info):
    for seed in range(20):
        constraint = build_constraint(tiny_info, response_format={"type": "json_object"})
        assert constraint.kind == "json_object"
        value = json.loads(text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=60)))
        assert isinstance(value, dict)


def test_logits_processor_masks_through_mlx(tiny_info):
    """The mlx path: logits (1, V) with padding, -inf outside the grammar."""
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="required")
    rng = np.random.default_rng(0)
    tokens = [1, 2, 3]  # the prompt: not advanced on the first call
    for _ in range(200):
        logits = mx.array(rng.normal(size=(1, PADDED_VOCAB)).astype(np.float32))
        masked = constraint(mx.array(tokens), logits)
        assert masked.shape == (1, PADDED_VOCAB)
        finite = np.isfinite(np.array(masked[0]))
        np.testing.assert_array_equal(finite, constraint.allowed())
        assert not finite[512:].any(), "padded ids must never be allowed"
        if constraint.done:
            break
        tokens.append(int(mx.argmax(masked[0]).item()))
    else:
        pytest.fail("greedy decoding under the grammar did not complete")
    ids = [t for t in tokens[3:] if t not in tiny_info.eos_token_ids]
    assert_valid_calls(text_of(tiny_info, ids), TOOLS)


def test_one_dimensional_logits_and_bf16(tiny_info):
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="required")
    logits = mx.zeros((PADDED_VOCAB,), dtype=mx.bfloat16)
    masked = constraint.apply(logits)
    assert masked.shape == (PADDED_VOCAB,) and masked.dtype == mx.bfloat16
    allowed = np.isfinite(np.array(masked.astype(mx.float32)))
    np.testing.assert_array_equal(allowed, constraint.allowed())
