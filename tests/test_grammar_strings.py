"""String patterns and formats over JSON text: never wider than the schema."""

from __future__ import annotations

import json
import random
import re

import pytest

from tests.test_grammar_sampling import STRICT_FORMATS
from tinygpt.runtime.grammar.patterns import PatternError, translate
from tinygpt.runtime.grammar.strings import FORMATS, format_regex, string_regex

PATTERNS = [
    r"^[A-Z]{3}$",
    r"^\d{4}-\d{2}-\d{2}$",
    r"^[a-z0-9_-]+$",
    r"abc",
    r"^\+?[1-9]\d{1,14}$",
    r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    r"^(?:[01]\d|2[0-3]):[0-5]\d$",
    r"^#[0-9a-fA-F]{6}$",
    r".*",
    r"^[\w.-]+$",
    r'^"quoted"$',
    r"^a\\b$",
    r"^\s*$",
    r"^[^\d]+$",
    r"x|^y$",
    r"^\S+$",
    r"^[\u00e0-\u00ff]+$",
    r"^[\n\t ]+$",
    r"^.{2,5}$",
    r"^a{1,100}$",
]
EXAMPLES = {
    r"^[A-Z]{3}$": "USD",
    r"^\d{4}-\d{2}-\d{2}$": "2024-01-31",
    r"^\+?[1-9]\d{1,14}$": "+4915112345678",
    r"^[^@\s]+@[^@\s]+\.[^@\s]+$": "a@b.co",
    r"^#[0-9a-fA-F]{6}$": "#a0B1c2",
    r"^(?:[01]\d|2[0-3]):[0-5]\d$": "23:59",
    r"^[\u00e0-\u00ff]+$": "àé",
    r"^[\n\t ]+$": "\n \t",
    r"^a{1,100}$": "aaa",
    r'^"quoted"$': '"quoted"',
    r"^a\\b$": "a\\b",
    r"x|^y$": "wax!",
}


def _candidates() -> list[str]:
    pool = list('abcxyzABC019_-.@+# "\\\n\t:/àé٣')
    rng = random.Random(1)
    found = {"".join(rng.choice(pool) for _ in range(rng.randint(0, 8))) for _ in range(20000)}
    return sorted(found | set(EXAMPLES.values()))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_matches_only_json_text_of_valid_strings(pattern):
    regex, least, most = translate(pattern)
    compiled = re.compile(regex)
    matched = 0
    for value in _candidates():
        text = json.dumps(value, ensure_ascii=False)[1:-1]
        if compiled.fullmatch(text):
            matched += 1
            assert re.search(pattern, value), (pattern, value, regex)
            assert least <= len(value) and (most is None or len(value) <= most)
    assert matched, f"{pattern!r} admitted none of the candidates"
    if pattern in EXAMPLES:
        assert compiled.fullmatch(json.dumps(EXAMPLES[pattern], ensure_ascii=False)[1:-1])


@pytest.mark.parametrize(
    "pattern, reason",
    [
        (r"(?=a)", "lookaround"),
        (r"\1", "backreference"),
        (r"\bword\b", "word boundary"),
        (r"a^b", "anchor"),
        (r"\p{L}", r"\\p"),
        (r"a{40}", "exceeds"),
        (r"a**", "nested quantifier"),
        (r"[]", "empty character class"),
        (r"(a", r"missing '\)'"),
    ],
)
def test_unsupported_patterns_are_rejected(pattern, reason):
    with pytest.raises(PatternError, match=reason):
        translate(pattern)


def test_formats_admit_only_valid_values():
    samples = {
        "date": ["2024-02-28", "2024-02-29", "2023-04-31", "1999-12-31", "0999-01-01"],
        "time": ["23:59:59Z", "12:00:00.5+02:00", "24:00:00Z", "12:00:00"],
        "date-time": ["2024-01-01T00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-01T10:00:00.123456-05:30"],
        "uuid": ["123e4567-e89b-12d3-a456-426614174000", "123E4567-E89B-12D3-A456-426614174000"],
        "email": ["a@example.com", "a.b+c@mail.example.org", "no-at.example.com"],
        "ipv4": ["192.168.0.1", "256.1.1.1", "01.2.3.4"],
        "ipv6": ["2001:db8:0:0:0:0:2:1", "2001:db8::1"],
        "hostname": ["api.example.com", "-bad.example.com"],
        "uri": ["https://example.com/a/b?c=d", "ftp://x", "https://example.com:8080/"],
    }
    for name, values in samples.items():
        regex = re.compile(format_regex(name)[0])
        for value in values:
            if regex.fullmatch(json.dumps(value)):
                assert STRICT_FORMATS.conforms(value, name), (name, value)
    assert re.fullmatch(format_regex("date")[0], '"2024-02-28"')
    assert not re.fullmatch(format_regex("date")[0], '"2023-04-31"')
    assert set(FORMATS) >= {"date", "date-time", "time", "uuid", "email", "ipv4", "uri"}


def test_length_bounds_count_decoded_characters():
    bounded = re.compile(string_regex(2, 4))
    assert bounded.fullmatch('"ab"') and bounded.fullmatch('"äöüß"')
    assert not bounded.fullmatch('"a"') and not bounded.fullmatch('"abcde"')
    assert not bounded.fullmatch('"a\\nb"')  # escapes stay out of counted strings
    at_least = re.compile(string_regex(3, None))
    assert at_least.fullmatch('"abc\\n"') and not at_least.fullmatch('"ab"')
