"""How deeply nested JSON may be: one limit for request bodies and the schemas in them.

Parsers and schema walkers recurse once per level, so a body such as `[[[[...]]]]` 3,000
deep (or a schema 300 objects deep) ends in a RecursionError, i.e. a 500 with a
traceback. Real requests and schemas stay far below this limit (BFCL's deepest function
schema: 7 levels); anything deeper is refused as a bad request before it is parsed.
"""

from __future__ import annotations

MAX_DEPTH = 64


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes) -> int:
    """The deepest array/object nesting of JSON text, without parsing it (C-speed passes).

    Brackets inside strings do not count. Escapes are dropped first (pairs of
    backslashes, then escaped quotes), so every quote left delimits a string and the
    even pieces of a split on quotes are what lies outside strings. Malformed text gets
    some number; the parser then reports what is wrong with it.
    """
    opening = data.count(b"[") + data.count(b"{")
    if opening <= MAX_DEPTH:
        return opening  # an upper bound, and already within the limit: no scan needed
    import numpy as np

    outside = b"".join(data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    b = np.frombuffer(brackets, dtype=np.int8)
    # "[" and "{" are 0x5B / 0x7B, "]" and "}" 0x5D / 0x7D: bit 1 is set on opening ones only.
    steps = (b & 2).astype(np.int32) - 1
    return int(np.cumsum(steps).max())


def value_depth(value, limit: int = MAX_DEPTH) -> int:
    """The nesting depth of decoded JSON (dicts / lists), counted iteratively up to `limit` + 1."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items = v.values()
        elif isinstance(v, (list, tuple)):
            items = v
        else:
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((x, d + 1) for x in items)
    return deepest
