"""Regexes for JSON strings: free text, length bounds, formats and patterns.

Every regex here matches the *JSON text* of a string, quotes included, and only texts
whose decoded value satisfies the schema (checked against `jsonschema`'s format checker
and stricter parsers in tests/test_grammar_strings.py).
"""

from __future__ import annotations

from .patterns import JSON_CHAR, PatternError, translate

# A raw character without escapes: length-bounded strings use it because a counted
# repeat of JSON_CHAR's escape alternative makes outlines_core's index build explode
# (seconds at {0,16} on a 49k vocabulary), while this class stays cheap.
PLAIN_CHAR = r'[^"\\\x00-\x1F\x7F-\x9F]'

# Where lengths are counted in the regex (paths the decode-time counter cannot take,
# see counters.py), each count is a DFA state with up to a vocabulary's worth of
# transitions; above this a maxLength is narrowed (see bounded_length). Measured on
# SmolLM2's 49k vocabulary: {0,32} ~0.7 s, {0,64} ~2 s to index.
MAX_COUNTED_LENGTH = 32

STRING = f'"{JSON_CHAR}*"'
# A string whose length the decode-time counter checks (counters.py): plain
# characters only, so every character is one code point and the first quote ends it.
COUNTED_STRING = f'"{PLAIN_CHAR}*"'

_YEAR = "[1-9][0-9]{3}"
# Day ranges per month; February stops at 28 so no leap-year arithmetic is needed.
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"{_YEAR}-{_MONTH_DAY}"
_HOUR_MINUTE = "(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_TIME = f"{_HOUR_MINUTE}:[0-5][0-9](?:\\.[0-9]{{1,6}})?(?:Z|[+\\-]{_HOUR_MINUTE})"
# Hostname labels stay under RFC 1123's 63 characters by construction (at most 20
# here: a counted repeat costs index states, and few real labels are longer).
_LABEL = "[a-z0-9](?:[a-z0-9\\-]{0,18}[a-z0-9])?"
_HOST = f"{_LABEL}(?:\\.{_LABEL}){{0,3}}\\.[a-z]{{2,6}}"
# Email parts have no length limit that jsonschema checks: unbounded loops are cheap.
_EMAIL_PART = "[a-z0-9](?:[a-z0-9\\-]*[a-z0-9])?"
_EMAIL = f"[a-z0-9](?:[a-z0-9._+\\-]*[a-z0-9])?@{_EMAIL_PART}(?:\\.{_EMAIL_PART})*\\.[a-z]{{2,6}}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_HEX4 = "[0-9a-f]{1,4}"
# Path, query and fragment characters of RFC 3986 without "%" (an escape needs two hex
# digits after it) and without the quote and backslash a JSON string would escape.
_URI_CHAR = "[A-Za-z0-9\\-._~!$&'()*+,;=:@]"

# format -> (regex over the string's text, min length, max length)
FORMATS: dict[str, tuple[str, int, int | None]] = {
    "date": (_DATE, 10, 10),
    "time": (_TIME, 9, 21),
    "date-time": (f"{_DATE}T{_TIME}", 20, 32),
    "uuid": ("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", 36, 36),
    "email": (_EMAIL, 6, None),
    "hostname": (_HOST, 4, None),
    "ipv4": (f"{_OCTET}(?:\\.{_OCTET}){{3}}", 7, 15),
    "ipv6": (f"{_HEX4}(?::{_HEX4}){{7}}", 15, 39),
    "uri": (
        f"https?://{_HOST}(?::[1-9][0-9]{{0,3}})?(?:/{_URI_CHAR}*)*(?:\\?(?:{_URI_CHAR}|/|\\?)*)?",
        11,
        None,
    ),
}
FORMATS["idn-email"] = FORMATS["email"]
FORMATS["idn-hostname"] = FORMATS["hostname"]
FORMATS["uri-reference"] = FORMATS["uri"]
FORMATS["iri"] = FORMATS["uri"]
FORMATS["iri-reference"] = FORMATS["uri"]


def string_regex(min_length: int = 0, max_length: int | None = None) -> str:
    """A JSON string whose decoded length lies in [min_length, max_length]."""
    if max_length is None:
        if min_length == 0:
            return STRING
        # The counted head is plain characters; anything (escapes too) may follow.
        return f'"{_count(PLAIN_CHAR, min_length, min_length)}{JSON_CHAR}*"'
    return f'"{_count(PLAIN_CHAR, min_length, bounded_length(min_length, max_length))}"'


def bounded_length(min_length: int, max_length: int) -> int:
    """The maximum length the grammar counts to: maxLength, narrowed to the counting cap.

    Narrowing keeps every output valid (shorter strings still satisfy maxLength); a
    minLength above the cap cannot be narrowed and is rejected by the caller.
    """
    return min(max_length, max(MAX_COUNTED_LENGTH, min_length))


def format_regex(name: str) -> tuple[str, int, int | None]:
    """(JSON string regex, min length, max length) for a supported `format`."""
    regex, least, most = FORMATS[name]
    return f'"{regex}"', least, most


def pattern_regex(pattern: str) -> tuple[str, int, int | None]:
    """(JSON string regex, min length, max length) for a `pattern`; PatternError if not."""
    regex, least, most = translate(pattern)
    return f'"{regex}"', least, most


def _count(atom: str, least: int, most: int) -> str:
    if most == 0:
        return ""
    if least == most:
        return atom if least == 1 else f"{atom}{{{least}}}"
    return f"{atom}{{{least},{most}}}"


__all__ = [
    "FORMATS",
    "COUNTED_STRING",
    "MAX_COUNTED_LENGTH",
    "PLAIN_CHAR",
    "STRING",
    "PatternError",
    "bounded_length",
    "format_regex",
    "pattern_regex",
    "string_regex",
]
