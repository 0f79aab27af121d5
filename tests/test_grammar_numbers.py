"""Numeric ranges as regexes: exactly the integers in range; decimals never outside it."""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal

import pytest

from tinygpt.runtime.grammar.numbers import EmptyRange, integer_regex, number_regex

INT_BOUNDS = [None, -1000, -101, -100, -99, -10, -9, -1, 0, 1, 9, 10, 11, 99, 100, 101, 999, 1000]
DEC_BOUNDS = [None, "-100", "-12.5", "-1", "-0.5", "-0.25", "0", "0.1", "0.25", "0.5", "1", "1.5", "9.99", "12.05", "100"]


def _bounds(values):
    for lo in values:
        for hi in values:
            for lo_x in (False, True):
                for hi_x in (False, True):
                    if (lo is None and lo_x) or (hi is None and hi_x):
                        continue
                    yield (None if lo is None else Decimal(lo)), lo_x, (None if hi is None else Decimal(hi)), hi_x


def _inside(v, lo, lo_x, hi, hi_x) -> bool:
    return (lo is None or (v > lo if lo_x else v >= lo)) and (hi is None or (v < hi if hi_x else v <= hi))


def _compile(build, *bounds):
    try:
        return re.compile(build(*bounds))
    except EmptyRange:
        return None


def test_integer_ranges_are_exact():
    candidates = [str(v) for v in range(-1100, 1100)]
    for bounds in _bounds(INT_BOUNDS):
        regex = _compile(integer_regex, *bounds)
        for text in candidates:
            expected = _inside(int(text), *bounds)
            assert (regex is not None and regex.fullmatch(text) is not None) == expected, (bounds, text)


def test_decimal_ranges_never_admit_outside_values():
    rng = random.Random(0)
    texts = set()
    for _ in range(4000):
        integer = rng.choice(["0", "1", "2", "9", "10", "12", "99", "100", "123"])
        sign = rng.choice(["", "-"])
        if rng.random() < 0.3:
            texts.add(sign + integer)
        else:
            texts.add(sign + integer + "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 5))))
    for bounds in _bounds(DEC_BOUNDS):
        regex = _compile(number_regex, *bounds)
        for text in texts:
            matched = regex is not None and regex.fullmatch(text) is not None
            inside = _inside(Decimal(text), *bounds)
            if matched:
                assert inside, (bounds, text)
            elif inside and bounds[0] is not None and bounds[2] is not None:
                # Left out on purpose: "-0" forms and trailing fraction zeros of "> 0" parts.
                assert Decimal(text) == 0 or text.endswith("0"), (bounds, text)


def test_empty_ranges_raise():
    with pytest.raises(EmptyRange):
        integer_regex(Decimal("0.2"), False, Decimal("0.8"), False)
    with pytest.raises(EmptyRange):
        number_regex(Decimal(1), True, Decimal(1), False)
    # ...but a fractional window still has decimals in it.
    assert re.fullmatch(number_regex(Decimal("0.2"), False, Decimal("0.8"), False), "0.5")


def test_strict_bounds_survive_float_parsing():
    """At most 15 significant digits: a value just below a strict bound stays below it."""
    regex = re.compile(number_regex(None, False, Decimal(1), True))
    assert not regex.fullmatch("0.9999999999999999999")  # rounds to 1.0 as a float
    assert regex.fullmatch("0.999999999999999")
    assert json.loads("0.999999999999999") < 1
    big = re.compile(number_regex(Decimal(0), False, Decimal("123456789012.5"), True))
    assert not big.fullmatch("123456789012.4999")  # 16 significant digits
    assert big.fullmatch("123456789012.499")


def test_unbounded_integers_and_numbers_keep_digits_bounded():
    assert re.fullmatch(integer_regex(None, False, None, False), "-" + "9" * 15)
    assert not re.fullmatch(integer_regex(None, False, None, False), "9" * 16)
    assert re.fullmatch(number_regex(None, False, None, False), "-1.5e-07")
    assert not re.fullmatch(number_regex(None, False, None, False), "1e999")
