"""Regexes for JSON numbers and integers inside bounds (minimum, maximum, exclusive*).

outlines_core's schema builder ignores numeric bounds; a tool's `"limit": {"minimum": 1,
"maximum": 100}` would then admit 0 or 1e9. These builders enforce them exactly, on the
decimal text the model writes, so the guarantee "every output validates" holds for ranges.

Deliberate narrowings (outputs stay valid, some valid numbers are not producible):
at most MAX_INT_DIGITS integer digits (keeps integers exact in float64 / JavaScript);
a typed number without bounds has at most MAX_FRACTION_DIGITS fraction and 2 exponent
digits; a bounded one no exponent, no "-0", and at most MAX_SIGNIFICANT significant
digits, so that a JSON parser's float rounding cannot carry it onto a strict bound.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MAX_INT_DIGITS = 15
MAX_FRACTION_DIGITS = 15
# Bounded decimals carry at most 15 significant digits (see _with_fraction).
MAX_SIGNIFICANT = 15
# Largest magnitude the integer part may take: 15 digits stays below 2**53.
LIMIT = Decimal(10**MAX_INT_DIGITS - 1)

INTEGER = rf"(?:-?(?:0|[1-9][0-9]{{0,{MAX_INT_DIGITS - 1}}}))"
NUMBER = (
    rf"(?:-?(?:0|[1-9][0-9]{{0,{MAX_INT_DIGITS - 1}}})"
    rf"(?:\.[0-9]{{1,{MAX_FRACTION_DIGITS}}})?(?:[eE][+-]?[0-9]{{1,2}})?)"
)
# Any JSON number, for values a schema leaves open ({}, json_object): unbounded digit
# runs cost one index state each instead of one per counted digit, and open values
# appear in many nesting contexts.
ANY_NUMBER = r"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"


class EmptyRange(ValueError):
    """No number of the requested kind lies inside the bounds."""


def to_decimal(value) -> Decimal:
    """A JSON bound (int or float) as an exact Decimal of its shortest text form."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"bound {value!r} is not a number")
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"bound {value!r} is not a finite number") from exc
    if not result.is_finite():
        raise ValueError(f"bound {value!r} is not a finite number")
    return result


def integer_regex(lo: Decimal | None, lo_excl: bool, hi: Decimal | None, hi_excl: bool) -> str:
    """Regex for the JSON integers n with lo <= n <= hi (strict where *_excl); None = open."""
    first, last = _integer_bounds(lo, lo_excl, hi, hi_excl)
    if first > last:
        raise EmptyRange(f"no integer lies in {_describe(lo, lo_excl, hi, hi_excl)}")
    if first == -LIMIT and last == LIMIT:
        return INTEGER
    parts = []
    if first < 0:
        parts.append("-" + _alternation(_natural_ranges(max(1, -last), -first)))
    if last >= 0:
        parts.append(_alternation(_natural_ranges(max(0, first), last)))
    return _alternation(parts)


def number_regex(lo: Decimal | None, lo_excl: bool, hi: Decimal | None, hi_excl: bool) -> str:
    """Regex for decimal JSON numbers x with lo <= x <= hi (strict where *_excl)."""
    if lo is None and hi is None:
        return NUMBER
    lo_c, lo_x = (-LIMIT - 1, True) if lo is None or lo < -LIMIT - 1 else (lo, lo_excl)
    hi_c, hi_x = (LIMIT + 1, True) if hi is None or hi > LIMIT + 1 else (hi, hi_excl)
    parts = []
    # Non-negative values: the magnitude interval is [max(lo, 0), hi].
    if hi_c > 0 or (hi_c == 0 and not hi_x):
        start, start_x = (lo_c, lo_x) if lo_c >= 0 else (Decimal(0), False)
        body = _magnitude_regex(start, start_x, hi_c, hi_x, allow_zero=True)
        if body:
            parts.append(body)
    # Negative values: magnitudes in (max(-hi, 0), -lo]; zero itself was covered above.
    if lo_c < 0:
        start, start_x = (-hi_c, hi_x) if hi_c < 0 else (Decimal(0), True)
        body = _magnitude_regex(start, start_x, -lo_c, lo_x, allow_zero=False)
        if body:
            parts.append("-" + body)
    if not parts:
        raise EmptyRange(f"no number lies in {_describe(lo, lo_excl, hi, hi_excl)}")
    return _alternation(parts)


def _describe(lo, lo_excl, hi, hi_excl) -> str:
    left = "(-inf" if lo is None else ("(" if lo_excl else "[") + str(lo)
    right = "inf)" if hi is None else str(hi) + (")" if hi_excl else "]")
    return f"{left}, {right}"


def _integer_bounds(lo, lo_excl, hi, hi_excl) -> tuple[int, int]:
    first = -int(LIMIT) if lo is None else int(_ceil(lo)) + (1 if lo_excl and lo == _ceil(lo) else 0)
    last = int(LIMIT) if hi is None else int(_floor(hi)) - (1 if hi_excl and hi == _floor(hi) else 0)
    return max(first, -int(LIMIT)), min(last, int(LIMIT))


def _floor(d: Decimal) -> Decimal:
    return d.to_integral_value(rounding="ROUND_FLOOR")


def _ceil(d: Decimal) -> Decimal:
    return d.to_integral_value(rounding="ROUND_CEILING")


def _fraction_digits(d: Decimal) -> str:
    """The digits after the point of a non-negative d, without trailing zeros."""
    text = format(d - _floor(d), "f")
    return text.partition(".")[2].rstrip("0")


def _magnitude_regex(lo: Decimal, lo_x: bool, hi: Decimal, hi_x: bool, *, allow_zero: bool) -> str:
    """Unsigned decimals m with lo <= m <= hi (0 <= lo): integers, then I.F forms."""
    if lo > hi or (lo == hi and (lo_x or hi_x)):
        return ""
    parts = []
    first, last = _integer_bounds(lo, lo_x, hi, hi_x)
    first = max(first, 0 if allow_zero else 1)
    if first <= last:
        parts.append(_alternation(_natural_ranges(first, last)))
    low_i = int(_floor(lo))
    if low_i <= LIMIT:
        # Above the digit cap every fraction of the last integer part is below hi.
        top_free = _floor(hi) > LIMIT
        top_i = int(LIMIT) if top_free else int(_floor(hi))
        lo_digits, hi_digits = _fraction_digits(lo), _fraction_digits(hi)
        if low_i == top_i:
            upper = None if top_free else hi_digits
            parts.append(_with_fraction(low_i, low_i, lo_digits, lo_x, upper, hi_x))
        else:
            parts.append(_with_fraction(low_i, low_i, lo_digits, lo_x, None, False))
            # Integer parts strictly inside the range take any fraction.
            middle_last = top_i if top_free else top_i - 1
            if low_i + 1 <= middle_last:
                parts.append(_with_fraction(low_i + 1, middle_last, None, False, None, False))
            if not top_free:
                parts.append(_with_fraction(top_i, top_i, None, False, hi_digits, hi_x))
    parts = [part for part in parts if part]
    return _alternation(parts) if parts else ""


def _with_fraction(first: int, last: int, lo: str | None, lo_x: bool, hi: str | None, hi_x: bool) -> str:
    """`I.F` for integer parts first..last, F within the fraction bounds (lo, hi).

    At most MAX_SIGNIFICANT digits in all: two such decimals never round to the same
    float64, so a strict bound still holds after a JSON parser reads the number.
    """
    parts = []
    for width in range(len(str(first)), len(str(last)) + 1):
        low = max(first, 10 ** (width - 1) if width > 1 else 0)
        high = min(last, 10**width - 1)
        significant = 0 if high == 0 else width
        room = MAX_SIGNIFICANT - significant
        if low > high or room < 1:
            continue
        fraction = _fraction_range(lo, lo_x, hi, hi_x, room=room, top=True)
        if fraction is not None:
            parts.append(_alternation(_same_width(str(low), str(high))) + r"\." + fraction)
    return _alternation(parts) if parts else ""


def _fraction_range(
    lo: str | None, lo_x: bool, hi: str | None, hi_x: bool, *, room: int, top: bool
) -> str | None:
    """Digit strings F of at most `room` digits with lo <= 0.F <= hi.

    `lo`/`hi` are fraction digits without trailing zeros ("" is 0, None is no bound);
    they compare as decimal fractions. With `top` the empty string is excluded (a JSON
    fraction has at least one digit). None when no string qualifies. Recurses on the
    first digit, so the result grows with the number of bound digits only.
    """
    if lo == "" and not lo_x:
        lo = None  # >= 0 always holds
    if lo is None and hi is None:
        return _repeat("[0-9]", 1 if top else 0, room)
    if lo == "" and hi is None:
        # Strictly above zero: ending on a non-zero digit says so in one small pattern
        # (fractions with trailing zeros are left out).
        return f"[0-9]{{0,{room - 1}}}[1-9]" if room >= 1 else None
    if hi == "":
        # 0.F <= 0: only zeros, and only when 0 itself is allowed.
        if hi_x or lo is not None:
            return None
        return _repeat("0", 1 if top else 0, room)
    alternatives = []
    # The empty remainder has value 0: below any remaining lower bound, within any upper.
    if lo is None and not top:
        alternatives.append("")
    if room == 0:
        return alternatives[0] if alternatives else None
    groups: dict[tuple, list[int]] = {}
    for digit in range(10):
        c = str(digit)
        if lo is None:
            next_lo, next_lo_x = None, False
        elif lo == "":
            # Strictly above zero: any non-zero digit settles it, a zero defers.
            next_lo, next_lo_x = ("", True) if c == "0" else (None, False)
        elif c < lo[0]:
            continue
        else:
            next_lo, next_lo_x = (lo[1:], lo_x) if c == lo[0] else (None, False)
        if hi is None:
            next_hi, next_hi_x = None, False
        elif c > hi[0]:
            continue
        else:
            next_hi, next_hi_x = (hi[1:], hi_x) if c == hi[0] else (None, False)
        groups.setdefault((next_lo, next_lo_x, next_hi, next_hi_x), []).append(digit)
    for (next_lo, next_lo_x, next_hi, next_hi_x), digits in groups.items():
        rest = _fraction_range(next_lo, next_lo_x, next_hi, next_hi_x, room=room - 1, top=False)
        if rest is not None:
            alternatives.append(_digit_class(digits) + rest)
    if not alternatives:
        return None
    return _alternation(alternatives)


def _repeat(atom: str, least: int, most: int) -> str:
    if most == 0:
        return ""
    return atom if least == most == 1 else f"{atom}{{{least},{most}}}"


def _digit_class(digits: list[int]) -> str:
    if len(digits) == 1:
        return str(digits[0])
    if digits == list(range(digits[0], digits[-1] + 1)):
        return f"[{digits[0]}-{digits[-1]}]"
    return "[" + "".join(map(str, digits)) + "]"


def _alternation(parts: list[str]) -> str:
    parts = list(dict.fromkeys(parts))
    if len(parts) == 1 and parts[0].isdigit():
        return parts[0]
    return "(?:" + "|".join(parts) + ")"


def _natural_ranges(first: int, last: int) -> list[str]:
    """Regex alternatives for the naturals first..last without leading zeros."""
    parts, full = [], []
    for width in range(len(str(first)), len(str(last)) + 1):
        low = max(first, 10 ** (width - 1) if width > 1 else 0)
        high = min(last, 10**width - 1)
        if width > 1 and low == 10 ** (width - 1) and high == 10**width - 1:
            full.append(width)  # every number of this width: merged into one run below
        elif low <= high:
            parts.extend(_same_width(str(low), str(high)))
    if full:
        least, most = full[0] - 1, full[-1] - 1
        tail = "[0-9]" if least == most == 1 else (
            f"[0-9]{{{least}}}" if least == most else f"[0-9]{{{least},{most}}}"
        )
        parts.append("[1-9]" + tail)
    return parts


def _same_width(low: str, high: str) -> list[str]:
    """Alternatives for the digit strings between low and high, both of one width."""
    width = len(low)
    if low == high:
        return [low]
    if low == "0" * width and high == "9" * width:
        return ["[0-9]" if width == 1 else f"[0-9]{{{width}}}"]
    if width == 1:
        return [f"[{low}-{high}]"]
    if low[0] == high[0]:
        return [low[0] + rest for rest in _same_width(low[1:], high[1:])]
    parts = []
    lo_digit, hi_digit = int(low[0]), int(high[0])
    if low[1:] == "0" * (width - 1):
        lo_digit -= 1  # the whole low block is full: merge it into the middle
    else:
        parts.extend(low[0] + rest for rest in _same_width(low[1:], "9" * (width - 1)))
    full_high = high[1:] == "9" * (width - 1)
    middle_last = hi_digit if full_high else hi_digit - 1
    if lo_digit + 1 <= middle_last:
        tail = "[0-9]" if width == 2 else f"[0-9]{{{width - 1}}}"
        head = str(lo_digit + 1) if lo_digit + 1 == middle_last else f"[{lo_digit + 1}-{middle_last}]"
        parts.append(head + tail)
    if not full_high:
        parts.extend(high[0] + rest for rest in _same_width("0" * (width - 1), high[1:]))
    return parts
