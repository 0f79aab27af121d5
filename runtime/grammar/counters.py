"""String lengths and array sizes checked while decoding, not in the regex.

A counted repeat `{0,N}` costs the token index N copies of what it repeats, each walked
against the whole vocabulary: seconds per bounded string or array at 49k tokens, and
memory. Instead such a string compiles to an unbounded run of plain characters and such
an array to an unbounded list, and this module follows the JSON being written to know
which string or array the model is in, then removes the tokens that would break
minLength / maxLength or minItems / maxItems.

Only plain strings are counted (no escapes: the first quote in a token closes the string,
and every UTF-8 lead byte is one character), and only at instance paths where nothing
else can appear (json_schema.SchemaCompiler.countable), so a count is always about the
schema node the regex enforces there.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from .fragments import ITEM
from .requests import TOOL_CALL_OPEN
from .vocabulary import TokenizerInfo

_QUOTE, _BACKSLASH = 0x22, 0x5C
_MARKER = (TOOL_CALL_OPEN + "\n").encode()
# Outside strings only these bytes change the JSON structure; runs of anything else
# (scalars) act alike, so tokens with the same skeleton have the same effect.
_SCALAR_RUN = re.compile(rb"[^ :,{}\[\]\"\\]+")
# Bytes a token would need after "<tool_call>\n" to reach a counted string's content.
_CALL_HEAD = len(b'{"name": "", "arguments": {"": "')


def _chars(data: bytes) -> int:
    return sum(1 for b in data if not 0x80 <= b <= 0xBF)


@dataclass(frozen=True)
class TokenTables:
    """Per token: characters before / after the first quote, quote count, part ids.

    Tokens with one quote are grouped by the bytes before it (`pre`) and after it
    (`post`), tokens without a quote by their skeleton: tokens in one group change the
    JSON structure alike and differ only in how many characters they add.
    """

    before: np.ndarray  # characters before the first quote (all, when none)
    after: np.ndarray  # characters after the first quote (one-quote tokens)
    quotes: np.ndarray  # 0, 1, or 2 for several quotes (or one after a backslash)
    pre: np.ndarray  # group id of the bytes before the first quote
    post: np.ndarray  # group id of the bytes after the first quote
    skeleton: np.ndarray  # group id of a quote-free token's skeleton
    parts: tuple[bytes, ...]  # group id -> bytes
    one_quote: np.ndarray  # ids of tokens with one quote
    two_quotes: np.ndarray  # ids checked one by one: two or more quotes, or an escaped one
    quoted: np.ndarray  # both
    no_quote: np.ndarray  # ids of quote-free tokens
    by_length: np.ndarray  # quote-free ids, most characters first
    lengths_desc: np.ndarray  # their character counts
    call_heads: np.ndarray  # ids of tokens that could hold a whole tool-call head


_TABLES: dict[str, TokenTables] = {}
_TABLES_LOCK = threading.Lock()


def token_tables(info: TokenizerInfo) -> TokenTables:
    """The TokenTables of a tokenizer (built once per tokenizer digest)."""
    with _TABLES_LOCK:
        cached = _TABLES.get(info.digest)
    if cached is not None:
        return cached
    size = info.vocab_size
    before, after = np.zeros(size, np.int32), np.zeros(size, np.int32)
    quotes = np.zeros(size, np.int8)
    pre, post, skeleton = np.full(size, -1, np.int32), np.full(size, -1, np.int32), np.full(size, -1, np.int32)
    ids: dict[bytes, int] = {}

    def intern(part: bytes) -> int:
        return ids.setdefault(part, len(ids))

    call_heads = []
    for token_id, piece in enumerate(info.token_bytes):
        if not piece:
            continue
        start = piece.find(b"\n{")
        if start >= 0 and len(piece) - start - 1 >= _CALL_HEAD:
            call_heads.append(token_id)  # could finish "<tool_call>\n", open the call and reach a count
        count = piece.count(b'"')
        cut = piece.find(b'"')
        if count == 1 and b"\\" in piece[:cut]:
            count = 2  # the quote may be escaped: checked one by one with the rest
        quotes[token_id] = min(count, 2)
        head = piece if cut < 0 else piece[:cut]
        before[token_id] = _chars(head)
        if count == 0:
            skeleton[token_id] = intern(_SCALAR_RUN.sub(b"x", piece))
        elif count == 1:
            after[token_id] = _chars(piece[cut + 1 :])
            pre[token_id] = intern(head)
            post[token_id] = intern(piece[cut + 1 :])
    parts = tuple(sorted(ids, key=ids.get))
    one_quote, two_quotes = np.flatnonzero(quotes == 1), np.flatnonzero(quotes == 2)
    no_quote = np.flatnonzero((quotes == 0) & (skeleton >= 0))
    # Longest first: "longer than the room left" is then a prefix (a binary search).
    by_length = no_quote[np.argsort(-before[no_quote], kind="stable")]
    tables = TokenTables(
        before, after, quotes, pre, post, skeleton, parts,
        one_quote=one_quote,
        two_quotes=two_quotes,
        quoted=np.concatenate([one_quote, two_quotes]),
        no_quote=no_quote,
        by_length=by_length,
        lengths_desc=before[by_length],
        call_heads=np.array(call_heads, dtype=np.int64),
    )
    with _TABLES_LOCK:
        _TABLES[info.digest] = tables
    return tables


class JsonTracker:
    """Follows valid JSON text byte by byte: containers, keys, the current string.

    In tools mode JSON starts after each "<tool_call>\\n", and a path inside the call's
    "arguments" becomes (function name, *path). Bounds come from `counts`, which maps
    ("string" | "array", path) to (least, most); `feed(data, check=True)` returns False
    as soon as `data` breaks one.
    """

    __slots__ = ("counts", "tools", "outside", "tail", "stack", "in_string", "is_key", "escape",
                 "buffer", "length", "bounds", "function", "scalar")

    def __init__(self, counts: dict, *, tools: bool):
        self.counts = counts
        self.tools = tools
        self.outside = tools  # between tool calls: free text / the call wrapper
        self.tail = b""
        # Frames: [kind "o"/"a", key, expecting a key, members so far, counted bounds].
        self.stack: list[list] = []
        self.in_string = False
        self.is_key = False
        self.escape = False
        self.buffer = bytearray()
        self.length = 0
        self.bounds = None  # (least, most) of the counted string being written
        self.function: str | None = None
        self.scalar = False

    def clone(self) -> "JsonTracker":
        """An independent copy, for trying a token without committing to it."""
        other = JsonTracker.__new__(JsonTracker)
        other.counts, other.tools, other.outside, other.tail = self.counts, self.tools, self.outside, self.tail
        other.stack = [frame[:] for frame in self.stack]
        other.in_string, other.is_key, other.escape = self.in_string, self.is_key, self.escape
        other.buffer = bytearray(self.buffer)
        other.length, other.bounds, other.function, other.scalar = self.length, self.bounds, self.function, self.scalar
        return other

    def signature(self) -> tuple:
        """Everything but the current string's length and content: what a token's
        structural effect depends on."""
        return (self.outside, self.tail, self.in_string, self.is_key, self.escape, self.scalar, self.bounds,
                self.function, tuple(tuple(frame) for frame in self.stack))

    def path(self, depth: int) -> tuple | None:
        """The instance path of a value inside the first `depth` containers."""
        path = tuple(ITEM if frame[0] == "a" else frame[1] for frame in self.stack[:depth])
        if not self.tools:
            return path
        if len(path) >= 2 and path[0] == "arguments" and self.function is not None:
            return (self.function, *path[1:])
        return None

    def string_path(self) -> tuple | None:
        """The instance path of the value string being written, or None."""
        if not self.in_string or self.is_key:
            return None
        return self.path(len(self.stack))

    def feed(self, data: bytes, check: bool = False) -> bool:
        """Consume `data`; with `check`, False as soon as it breaks a counted bound."""
        for b in data:
            if self.outside:
                self.tail = (self.tail + bytes([b]))[-len(_MARKER) :]
                if self.tail == _MARKER:
                    self.outside, self.tail, self.function = False, b"", None
            elif self.in_string:
                if self.escape:
                    self.escape = False
                elif b == _BACKSLASH:
                    self.escape = True
                elif b == _QUOTE:
                    if check and self.bounds is not None and self.length < self.bounds[0]:
                        return False
                    self._close_string()
                    continue
                if self.is_key or self._capturing_name():
                    self.buffer.append(b)
                if not 0x80 <= b <= 0xBF:
                    self.length += 1
                    if check and self.bounds is not None and self.bounds[1] is not None and self.length > self.bounds[1]:
                        return False
            elif not self._structure(b, check):
                return False
        return True

    def _structure(self, b: int, check: bool) -> bool:
        if self.scalar:
            if b not in b" ,]}":
                return True
            self.scalar = False
            self._after_value()
        if b == 0x20 or b == 0x3A:  # space, ":"
            return True
        top = self.stack[-1] if self.stack else None
        if b == 0x2C:  # ","
            if top is not None and top[0] == "o":
                top[2] = True
            # The comma promises one more item / member: not past the maximum.
            return not (check and top is not None and top[4] is not None and top[4][1] is not None and top[3] >= top[4][1])
        if b in b"}]":
            if check and top[4] is not None and top[3] < top[4][0]:
                return False
            self.stack.pop()
            self._after_value()
            return True
        # A key or a value starts: a string, a container or a scalar.
        if top is not None and (top[0] == "a" or top[2]):
            top[3] += 1
            if check and top[4] is not None and top[4][1] is not None and top[3] > top[4][1]:
                return False
        if b == _QUOTE and top is not None and top[2]:
            self._open_string(key=True)
            return True
        if b in b"{[":
            kind = "o" if b == 0x7B else "a"
            self.stack.append([kind, None, kind == "o", 0, None])
            self.stack[-1][4] = self.counts.get(("object" if kind == "o" else "array", self.path(len(self.stack) - 1)))
        elif b == _QUOTE:
            self._open_string(key=False)
        else:
            self.scalar = True  # number, true, false, null
        return True

    def _open_string(self, *, key: bool) -> None:
        self.in_string, self.is_key = True, key
        self.buffer.clear()
        self.length = 0
        self.bounds = None if key else self.counts.get(("string", self.path(len(self.stack))))

    def _capturing_name(self) -> bool:
        return self.tools and len(self.stack) == 1 and self.stack[0][1] == "name"

    def _close_string(self) -> None:
        self.in_string, self.bounds = False, None
        if self.is_key:
            self.stack[-1][1] = self.buffer.decode("utf-8", "replace")
            self.stack[-1][2] = False
            return
        if self._capturing_name():
            self.function = self.buffer.decode("utf-8", "replace")
        self._after_value()

    def _after_value(self) -> None:
        if not self.stack and self.tools:
            self.outside = True  # the call's object closed


class CountGuard:
    """Per request: removes the tokens that would break a counted bound.

    Per step: the tokens too long for the string being written (a binary search over
    tokens sorted by length), and one simulated representative per group of quote tokens
    (same structural bytes around the quote); group outcomes are cached per tracker
    state, which inside a string stays the same from token to token. Everything but the
    length lookup works on the few hundred tokens that contain a quote.
    """

    def __init__(self, info: TokenizerInfo, counts: dict, *, tools: bool):
        self.tracker = JsonTracker(counts, tools=tools)
        self._bytes = info.token_bytes
        self._t = token_tables(info)
        # Array and object counts also depend on commas and brackets, not just quotes.
        self._containers = any(kind != "string" for kind, _ in counts)
        self._cache: dict[tuple, object] = {}

    def advance(self, token_id: int) -> None:
        """Follow the JSON past `token_id` (already accepted by the grammar)."""
        piece = self._bytes[token_id] if token_id < len(self._bytes) else None
        if piece:
            self.tracker.feed(piece)

    def fits(self, token_id: int) -> bool:
        """Whether `token_id` keeps every counted string and array within its bounds."""
        piece = self._bytes[token_id] if token_id < len(self._bytes) else None
        return not piece or self.tracker.clone().feed(piece, check=True)

    def restrict(self, allowed: np.ndarray) -> np.ndarray | None:
        """`allowed` without the tokens that break a bound, or None if it keeps all."""
        tracker, t = self.tracker, self._t
        if tracker.outside:
            # From free text a token must finish "<tool_call>\n" and hold a whole call
            # head to reach a count: only such (rare) tokens are checked there.
            bad_ids = np.array([i for i in t.call_heads[allowed[t.call_heads]] if not self.fits(int(i))], dtype=np.int64)
            return self._without(allowed, bad_ids)
        if tracker.in_string and tracker.escape:
            # Right after a backslash the next byte is escaped, whatever group it is in:
            # check the quote tokens one by one (only uncounted strings have escapes).
            quoted = t.quoted[allowed[t.quoted]]
            return self._without(allowed, np.array([i for i in quoted if not self.fits(int(i))], dtype=np.int64))
        if len(self._cache) > 4096:
            self._cache.clear()
        signature = tracker.signature()
        bad: list[np.ndarray] = []
        if tracker.in_string:
            if tracker.bounds is not None:
                least, most = tracker.bounds
                if most is not None:
                    room = most - tracker.length
                    # Tokens sorted longest first: those longer than the room are a prefix.
                    too_long = int(np.searchsorted(-t.lengths_desc, -room, side="left"))
                    bad.append(t.by_length[:too_long])
                used = tracker.length + t.before[t.quoted]
                breaks = used < least
                if most is not None:
                    breaks |= used > most
                bad.append(t.quoted[breaks])
            # One quote: what follows the closing quote is structure, alike per `post`;
            # without a second quote it can only break an array or object count.
            if self._containers:
                bad.append(self._groups(allowed, t.one_quote, t.post, signature, self._after_close))
        else:
            # One quote: the bytes before it are structure (alike per `pre`); after it,
            # content of the string it opens.
            bad.append(self._groups(allowed, t.one_quote, t.pre, signature, self._opening))
            if self._containers:
                bad.append(self._groups(allowed, t.no_quote, t.skeleton, signature, self._skeleton))
        two = t.two_quotes[allowed[t.two_quotes]]
        bad.append(np.array([i for i in two if not self.fits(int(i))], dtype=np.int64))
        return self._without(allowed, np.concatenate(bad))

    @staticmethod
    def _without(allowed: np.ndarray, bad_ids: np.ndarray) -> np.ndarray | None:
        bad_ids = bad_ids[allowed[bad_ids]] if bad_ids.size else bad_ids
        if bad_ids.size == 0:
            return None
        narrowed = allowed.copy()
        narrowed[bad_ids] = False
        return narrowed

    def _groups(self, allowed, candidates, group_of, signature, outcome) -> np.ndarray:
        """The allowed `candidates` whose group's `outcome(part)` rules them out."""
        members = candidates[allowed[candidates]]
        if members.size == 0:
            return members
        groups = group_of[members]
        out = []
        for group in np.unique(groups):
            key = (signature, outcome.__name__, int(group))
            result = self._cache.get(key)
            if result is None:
                result = outcome(self._t.parts[group])
                self._cache[key] = result
            if result is True:
                continue
            tokens = members[groups == group]
            if result is not False:  # the most characters the opened string may take
                tokens = tokens[self._t.after[tokens] > result]
            out.append(tokens)
        return np.concatenate(out) if out else members[:0]

    def _after_close(self, post: bytes) -> bool:
        probe = self.tracker.clone()
        probe.bounds = None  # the closing itself is checked by length
        return probe.feed(b'"' + post, check=True)

    def _opening(self, pre: bytes):
        """False if `pre` + quote breaks a bound, else True or the opened string's room."""
        probe = self.tracker.clone()
        if not probe.feed(pre + b'"', check=True):
            return False
        if probe.in_string and probe.bounds is not None and probe.bounds[1] is not None:
            return probe.bounds[1]
        return True

    def _skeleton(self, skeleton: bytes) -> bool:
        return self.tracker.clone().feed(skeleton, check=True)
