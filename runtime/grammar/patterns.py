"""JSON Schema `pattern` (ECMA-262 syntax) → a regex over the *JSON text* of a string.

The model writes the JSON encoding of a string, so a pattern cannot be pasted between
quotes as outlines does: `.` would admit a raw `"` (ending the string early) or a raw
newline (invalid JSON). This translator parses the pattern and re-emits it over JSON
text: characters that need escaping are written as their JSON escapes, or left out of
sets that contain almost all of them (`.`, `[^...]`, `\\S`).

The result is a narrowing of the pattern, never a widening, under both ECMA-262 (the
spec) and Python `re` (what `jsonschema` uses): `\\d`, `\\w`, `\\s` become their ASCII
sets, their negations stay within printable ASCII, anchors at the ends are dropped and an
unanchored pattern is matched as a whole (which implies it is also found by a search).

Rejected with PatternError: lookarounds, backreferences, word boundaries, Unicode
property escapes, anchors inside the pattern, and repetition counts above MAX_REPEAT.
"""

from __future__ import annotations

from dataclasses import dataclass

# Larger counted repeats are narrowed to this (a DFA state per count); a larger minimum
# cannot be narrowed and is rejected.
MAX_REPEAT = 32
MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)

# One character of a JSON string's text: raw (no quote, backslash or control) or an
# escape; the same class as outlines_core's STRING_INNER.
JSON_CHAR = r'(?:[^"\\\x00-\x1F\x7F-\x9F]|\\["\\/bfnrt])'

# Characters a JSON string cannot hold raw, and how JSON writes them.
_JSON_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
UNSAFE = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))
# A set with more unsafe members than this came from a complement (".", "[^x]"): those
# members are dropped rather than spelled out as escapes.
_MAX_ESCAPED = 8

DIGIT = ((0x30, 0x39),)
WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
SPACE = ((0x09, 0x0D), (0x20, 0x20))
PRINTABLE_ASCII = ((0x20, 0x7E),)
LINE_TERMINATORS = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))


class PatternError(ValueError):
    """The pattern uses a feature that a regular, JSON-safe translation cannot keep."""


def _normalize(ranges) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def _complement(ranges) -> tuple[tuple[int, int], ...]:
    result, start = [], 0
    for lo, hi in _normalize(list(ranges) + [SURROGATES]):
        if lo > start:
            result.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= MAX_CODE_POINT:
        result.append((start, MAX_CODE_POINT))
    return tuple(result)


def _intersect(a, b) -> tuple[tuple[int, int], ...]:
    return _complement(_complement(a) + _complement(b))


def _size(ranges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


@dataclass(frozen=True)
class Chars:
    """A set of code points; `unicode_classes` marks sets holding \\d, \\w or \\s, whose
    complement must stay within ASCII to agree with Python's Unicode-aware classes."""

    ranges: tuple[tuple[int, int], ...]
    unicode_classes: bool = False


@dataclass(frozen=True)
class Node:
    """A parsed pattern: a character set, a sequence, an alternation or a repeat."""

    kind: str  # "chars" | "seq" | "alt" | "repeat" | "any" (any JSON string text)
    chars: Chars | None = None
    items: tuple["Node", ...] = ()
    least: int = 0
    most: int | None = None


def translate(pattern: str) -> tuple[str, int, int | None]:
    """(regex over JSON string content, min length, max length or None) for `pattern`.

    A side of a top-level branch without its anchor (`^` / `$`) admits any text there,
    as a pattern search does. Lengths count decoded characters, for checking against
    minLength / maxLength.
    """
    if not isinstance(pattern, str):
        raise PatternError(f"pattern must be a string, got {type(pattern).__name__}")
    node = _Parser(pattern).parse()
    regex = _emit(node)
    least, most = _lengths(node)
    return regex, least, most


class _Parser:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def parse(self) -> Node:
        """The whole pattern as a Node; PatternError at the first unsupported feature."""
        node = self._alternation(top=True)
        if self.pos != len(self.text):
            raise PatternError(f"unbalanced ')' at offset {self.pos}")
        return node

    def _peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.text[i] if i < len(self.text) else None

    def _alternation(self, *, top: bool) -> Node:
        branches = [self._sequence(top=top)]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._sequence(top=top))
        return branches[0] if len(branches) == 1 else Node("alt", items=tuple(branches))

    def _sequence(self, *, top: bool) -> Node:
        items: list[Node] = []
        start_anchored = end_anchored = False
        if top and self._peek() == "^":
            self.pos += 1
            start_anchored = True
        while (c := self._peek()) is not None and c not in "|)":
            if c == "$" and top and self._peek(1) in (None, "|"):
                self.pos += 1
                end_anchored = True
                break
            if c in "^$":
                raise PatternError(f"anchor {c!r} inside the pattern (offset {self.pos}) is not supported")
            atom = self._atom()
            items.append(self._quantified(atom))
        if top:
            # A search finds the pattern anywhere: unanchored ends admit any text.
            items = ([] if start_anchored else [ANY]) + items + ([] if end_anchored else [ANY])
        return items[0] if len(items) == 1 else Node("seq", items=tuple(items))

    def _atom(self) -> Node:
        c = self.text[self.pos]
        if c == "(":
            self.pos += 1
            if self._peek() == "?":
                if self.text.startswith("?:", self.pos):
                    self.pos += 2
                elif self.text.startswith("?<", self.pos) and self._peek(2) not in ("=", "!"):
                    end = self.text.find(">", self.pos)
                    if end < 0:
                        raise PatternError("unterminated group name")
                    self.pos = end + 1
                else:
                    raise PatternError(f"lookaround or group flag at offset {self.pos - 1} is not supported")
            inner = self._alternation(top=False)
            if self._peek() != ")":
                raise PatternError("missing ')'")
            self.pos += 1
            return inner
        if c == "[":
            return Node("chars", chars=self._class())
        if c == ".":
            self.pos += 1
            return Node("chars", chars=Chars(_complement(LINE_TERMINATORS)))
        if c in "*+?":
            raise PatternError(f"nothing to repeat at offset {self.pos}")
        if c == "{" and self._counted(peek_only=True) is not None:
            raise PatternError(f"nothing to repeat at offset {self.pos}")
        if c == "\\":
            return Node("chars", chars=self._escape(in_class=False))
        self.pos += 1
        return Node("chars", chars=Chars(((ord(c), ord(c)),)))

    def _counted(self, *, peek_only: bool) -> tuple[int, int | None] | None:
        """Parse `{n}`, `{n,}` or `{n,m}` at pos; None when it is a literal brace."""
        end = self.text.find("}", self.pos)
        if end < 0:
            return None
        body = self.text[self.pos + 1 : end]
        low, comma, high = body.partition(",")
        if not low.isdigit() or (high and not high.isdigit()):
            return None
        if not peek_only:
            self.pos = end + 1
        return int(low), (int(high) if high else None) if comma else int(low)

    def _quantified(self, atom: Node) -> Node:
        c = self._peek()
        if c == "*":
            least, most = 0, None
            self.pos += 1
        elif c == "+":
            least, most = 1, None
            self.pos += 1
        elif c == "?":
            least, most = 0, 1
            self.pos += 1
        elif c == "{" and (counted := self._counted(peek_only=False)) is not None:
            least, most = counted
            if most is not None and most < least:
                raise PatternError(f"repetition {{{least},{most}}} has max below min")
        else:
            return atom
        if self._peek() == "?":
            self.pos += 1  # lazy: same language
        if self._peek() in ("*", "+", "?") or (self._peek() == "{" and self._counted(peek_only=True)):
            raise PatternError(f"nested quantifier at offset {self.pos}")
        if least > MAX_REPEAT:
            raise PatternError(f"repetition minimum {least} exceeds {MAX_REPEAT}")
        if most is not None and most > MAX_REPEAT:
            most = MAX_REPEAT  # narrowing: fewer repeats still match the pattern
        return Node("repeat", items=(atom,), least=least, most=most)

    def _escape(self, *, in_class: bool) -> Chars:
        self.pos += 1
        c = self._peek()
        if c is None:
            raise PatternError("pattern ends with a backslash")
        self.pos += 1
        classes = {"d": DIGIT, "w": WORD, "s": SPACE}
        if c in classes:
            return Chars(classes[c], unicode_classes=True)
        if c in "DWS":
            # Python's \D, \W, \S exclude Unicode digits/letters/spaces: stay in ASCII.
            return Chars(_intersect(_complement(classes[c.lower()]), PRINTABLE_ASCII))
        simple = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "v": 0x0B, "0": 0x00}
        if c in simple:
            return _single(simple[c])
        if c == "b":
            if in_class:
                return _single(0x08)
            raise PatternError("word boundary \\b is not supported")
        if c == "x":
            return _single(self._hex(2))
        if c == "u":
            if self._peek() == "{":
                end = self.text.find("}", self.pos)
                if end < 0:
                    raise PatternError("unterminated \\u{...} escape")
                digits = self.text[self.pos + 1 : end]
                self.pos = end + 1
                return _single(_parse_hex(digits))
            return _single(self._hex(4))
        if c == "c" and (letter := self._peek()) is not None and letter.isascii() and letter.isalpha():
            self.pos += 1
            return _single(ord(letter) % 32)
        if c.isdigit():
            raise PatternError("backreferences are not supported")
        if c in "pPkBc" or c.isalnum():
            raise PatternError(f"escape \\{c} is not supported")
        return _single(ord(c))

    def _hex(self, count: int) -> int:
        digits = self.text[self.pos : self.pos + count]
        self.pos += count
        return _parse_hex(digits)

    def _class(self) -> Chars:
        self.pos += 1
        negate = self._peek() == "^"
        if negate:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        unicode_classes = False
        first = True
        while True:
            c = self._peek()
            if c is None:
                raise PatternError("unterminated character class")
            if c == "]" and not first:
                self.pos += 1
                break
            if c == "]":
                # "[]" matches nothing in ECMA-262; "[^]" anything.
                self.pos += 1
                if not negate:
                    raise PatternError("empty character class [] matches nothing")
                break
            first = False
            low = self._class_atom()
            if self._peek() == "-" and self._peek(1) not in ("]", None):
                self.pos += 1
                high = self._class_atom()
                if low.unicode_classes or high.unicode_classes or len(low.ranges) != 1 or len(high.ranges) != 1:
                    raise PatternError("a class escape cannot bound a range")
                lo, hi = low.ranges[0][0], high.ranges[0][0]
                if hi < lo:
                    raise PatternError(f"range out of order in character class at offset {self.pos}")
                ranges.append((lo, hi))
            else:
                ranges.extend(low.ranges)
                unicode_classes |= low.unicode_classes
        ranges = list(_normalize(ranges))
        if not negate:
            return Chars(tuple(ranges), unicode_classes=unicode_classes)
        complement = _complement(ranges)
        if unicode_classes:
            complement = _intersect(complement, PRINTABLE_ASCII)
        return Chars(complement)

    def _class_atom(self) -> Chars:
        c = self.text[self.pos]
        if c == "\\":
            return self._escape(in_class=True)
        self.pos += 1
        return _single(ord(c))


def _single(code: int) -> Chars:
    if code > MAX_CODE_POINT:
        raise PatternError(f"code point {code:#x} is out of range")
    return Chars(((code, code),))


def _parse_hex(digits: str) -> int:
    try:
        return int(digits, 16)
    except ValueError:
        raise PatternError(f"bad hex escape {digits!r}") from None


ANY = Node("any")


def _emit(node: Node) -> str:
    if node.kind == "any":
        return f"{JSON_CHAR}*"
    if node.kind == "chars":
        return _emit_chars(node.chars.ranges)
    if node.kind == "seq":
        return "".join(_emit(item) for item in node.items)
    if node.kind == "alt":
        return "(?:" + "|".join(_emit(item) for item in node.items) + ")"
    inner = _emit(node.items[0])
    most = "" if node.most is None else str(node.most)
    if (node.least, node.most) == (0, None):
        suffix = "*"
    elif (node.least, node.most) == (1, None):
        suffix = "+"
    elif (node.least, node.most) == (0, 1):
        suffix = "?"
    elif node.least == node.most:
        suffix = f"{{{node.least}}}"
    else:
        suffix = f"{{{node.least},{most}}}"
    return f"(?:{inner}){suffix}"


def _emit_chars(ranges) -> str:
    """One character of JSON text per member: raw when safe, else its JSON escape."""
    unsafe = _intersect(ranges, UNSAFE)
    safe = _intersect(ranges, _complement(UNSAFE))
    alternatives = []
    if safe:
        alternatives.append(_char_class(safe))
    if unsafe and _size(unsafe) <= _MAX_ESCAPED:
        for lo, hi in unsafe:
            for code in range(lo, hi + 1):
                escaped = _JSON_ESCAPES.get(code, f"\\u{code:04x}")
                alternatives.append(escaped.replace("\\", "\\\\"))
    if not alternatives:
        raise PatternError("the pattern needs characters a JSON string cannot hold")
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _char_class(ranges) -> str:
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _char(ranges[0][0])
    body = "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges)
    return f"[{body}]"


def _char(code: int) -> str:
    """A code point in syntax both Rust's regex crate and Python's re read the same way."""
    ch = chr(code)
    if ch.isascii() and ch.isalnum():
        return ch
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _lengths(node: Node) -> tuple[int, int | None]:
    if node.kind == "any":
        return 0, None
    if node.kind == "chars":
        return 1, 1
    if node.kind == "seq":
        least, most = 0, 0
        for item in node.items:
            lo, hi = _lengths(item)
            least += lo
            most = None if most is None or hi is None else most + hi
        return least, most
    if node.kind == "alt":
        spans = [_lengths(item) for item in node.items]
        most = None if any(hi is None for _, hi in spans) else max(hi for _, hi in spans)
        return min(lo for lo, _ in spans), most
    lo, hi = _lengths(node.items[0])
    most = None if node.most is None or hi is None else hi * node.most
    return lo * node.least, most
