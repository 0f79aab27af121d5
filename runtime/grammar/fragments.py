"""Regex fragments: what a compiled (sub)schema is, and the pieces JSON regexes share.

Every regex here is written in the common subset of Rust's regex crate (what
outlines_core parses) and Python's `re` (what the tests check them with).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import numbers, strings
from .errors import GrammarError

# Between JSON tokens: at most one space, so a model cannot pad forever.
WHITESPACE = r"[ ]?"
# Nesting depth of values a schema leaves open ({}, true, additionalProperties: true).
ANY_DEPTH = 2
# In an instance path: any array item / any member of an object without declared properties.
ITEM = None
FREE = ("free",)

_REGEX_META = set("\\.+*?()|[]{}^$#&-~")
_SEP = f"{WHITESPACE},{WHITESPACE}"


def escape(text: str) -> str:
    """`text` as a literal for Rust's regex crate (what outlines_core parses) and Python's re."""
    return "".join("\\" + ch if ch in _REGEX_META else ch for ch in text)


def literal(value) -> str:
    """The regex for exactly the JSON text json.dumps writes for `value`."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise GrammarError(f"value {value!r} is not valid JSON") from exc
    return escape(text)


@dataclass(frozen=True)
class Fragment:
    """A compiled (sub)schema: its regex, the JSON kinds it emits, its values if finite.

    On the root fragment, `counts` maps ("string" | "array" | "object", instance path)
    to the (minLength, maxLength) / (minItems, maxItems) / (minProperties,
    maxProperties) checked at decode time instead of in the regex (counters.py). A path
    is a tuple of property names and ITEM for array items.
    """

    regex: str
    kinds: frozenset[str]
    values: frozenset[str] | None = None
    counts: dict = field(default_factory=dict, compare=False)


def any_value_regex(depth: int) -> str:
    """Regex for any JSON value whose containers nest at most `depth` levels."""
    scalars = [strings.STRING, numbers.ANY_NUMBER, "true", "false", "null"]
    if depth > 0:
        inner = any_value_regex(depth - 1)
        member = f"{strings.STRING}{WHITESPACE}:{WHITESPACE}{inner}"
        scalars.append(f"\\[{WHITESPACE}(?:{inner}(?:{_SEP}{inner})*)?{WHITESPACE}\\]")
        scalars.append(f"\\{{{WHITESPACE}(?:{member}(?:{_SEP}{member})*)?{WHITESPACE}\\}}")
    return "(?:" + "|".join(scalars) + ")"


def any_object_regex(depth: int = ANY_DEPTH + 1) -> str:
    """Regex for any JSON object (response_format json_object), values nested below it."""
    inner = any_value_regex(depth - 1)
    member = f"{strings.STRING}{WHITESPACE}:{WHITESPACE}{inner}"
    return f"\\{{{WHITESPACE}(?:{member}(?:{_SEP}{member})*)?{WHITESPACE}\\}}"


def union(fragments: list[Fragment]) -> Fragment:
    """The alternation of fragments."""
    if len(fragments) == 1:
        return fragments[0]
    kinds = frozenset().union(*(f.kinds for f in fragments))
    values = None
    if all(f.values is not None for f in fragments):
        values = frozenset().union(*(f.values for f in fragments))
    return Fragment("(?:" + "|".join(f.regex for f in fragments) + ")", kinds, values)


def repeat(regex: str, least: int, most: int | None) -> str:
    """`regex` repeated least..most times (most None: unbounded)."""
    if most == 0:
        return ""
    if (least, most) == (0, None):
        return f"(?:{regex})*"
    if least == most:
        return f"(?:{regex}){{{least}}}" if least != 1 else f"(?:{regex})"
    return f"(?:{regex}){{{least},{'' if most is None else most}}}"


def sequence(open_: str, close: str, prefix: list[str], rest: Fragment | None, least: int, most: int | None) -> str:
    """`open_` items `close`: the `prefix` regexes in order, then repeats of `rest`,
    comma-separated, least..most items in all (most None: unbounded)."""
    if most is not None and most < len(prefix):
        prefix, rest = prefix[:most], None
    n = len(prefix)
    items = ""
    if rest is not None and (most is None or most > n):
        low, high = max(0, least - n), None if most is None else most - n
        if n == 0:
            # No prefix: the first item has no comma before it.
            first = f"{rest.regex}{repeat(_SEP + rest.regex, max(0, low - 1), None if high is None else high - 1)}"
            items = first if low > 0 else f"(?:{first})?"
        else:
            items = repeat(_SEP + rest.regex, low, high)
    # Prefix positions from the last to the second, each optional once minItems is met.
    for i in range(n - 1, 0, -1):
        piece = f"{_SEP}{prefix[i]}{items}"
        items = piece if i < least else f"(?:{piece})?"
    if n:
        items = f"{prefix[0]}{items}" if least > 0 else f"(?:{prefix[0]}{items})?"
    return f"{open_}{WHITESPACE}{items}{WHITESPACE}{close}"


def subsequence(members: list[tuple[str, bool]], *, nonempty: bool = False) -> str:
    """Members in order, comma-separated, each optional one present or not.

    With `nonempty` at least one member is present (minProperties / minItems 1).
    The regex grows quadratically with the number of optional members.
    """
    n = len(members)
    # after[j]: members j.. each preceded by a separator; start[i]: members i.. with
    # no separator before the first present one.
    after = [""] * (n + 1)
    for j in range(n - 1, -1, -1):
        regex, req = members[j]
        after[j] = (f"{_SEP}{regex}" if req else f"(?:{_SEP}{regex})?") + after[j + 1]
    start = ""
    for i in range(n - 1, -1, -1):
        regex, req = members[i]
        with_i = f"{regex}{after[i + 1]}"
        if req:
            start = with_i
        elif start:
            start = f"(?:{with_i}|{start})"
        else:
            start = f"(?:{with_i})" if nonempty else f"(?:{with_i})?"
    return start
