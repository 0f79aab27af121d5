"""Statistics for the eval gate: per-suite summaries and candidate-vs-baseline comparisons.

Pure Python (no numpy, no scipy): the gate's cache-hit path imports this, and the
numbers involved are a few hundred items at most.

    summarize(scores, percentile=None) -> Summary     mean, std, stderr, 95% interval
    compare(cand, base, percentile=None) -> Comparison    delta, its 95% interval, p-value

Item scores are per-item means over the K passes, so K samples of one question count
as one observation (their noise is averaged, not mistaken for more data). Intervals:
Wilson's score interval for pass/fail items (every score 0 or 1: it does not collapse
to a point at 0% or 100%), Student's t otherwise, a seeded bootstrap over items for
percentile metrics (p95 latency). Comparisons are paired when both sides scored the
same items, else Welch's t-test. Paired pass/fail items (every score 0 or 1 on both
sides) get the exact McNemar test: a two-sided binomial test on the discordant pairs
(items gained vs lost), since a t-test on 0/±1 differences overstates the evidence (5
gained / 0 lost of 60: t gives p = 0.024, the exact test 0.0625) and calls any constant
difference certain (two items both flipped: p = 0). Continuous scores keep the paired
t-test, percentiles the paired bootstrap.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 2000
ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    value: float  # the metric: the mean, or the percentile
    mean: float
    std: float
    stderr: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class Comparison:
    delta: float  # candidate - baseline
    ci95: tuple[float, float] | None
    p_value: float | None
    significant: bool
    method: str


# ---------------------------------------------------------------- basics


def mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else 0.0


def std(xs: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two values."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ---------------------------------------------------------------- Student's t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)), -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (p > 0.5) of Student's t, by bisection on the CDF."""
    target = 2.0 * (1.0 - p)  # two-sided tail mass
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


# ---------------------------------------------------------------- summaries


def is_binary(xs: list[float]) -> bool:
    return bool(xs) and all(x in (0.0, 1.0) for x in xs)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0% or 100% one bound is exactly 0 or 1; round away the float residue.
    lo, hi = center - half, center + half
    return (0.0 if lo < 1e-12 else lo, 1.0 if hi > 1 - 1e-12 else hi)


def _bootstrap(values: list[float], stat, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(BOOTSTRAP_SAMPLES))
    return (percentile(draws, 2.5), percentile(draws, 97.5))


def summarize(scores: list[float], q: float | None = None) -> Summary:
    """Mean, std, stderr and a 95% interval of the metric (the mean, or the q-th percentile)."""
    n = len(scores)
    m, s = mean(scores), std(scores)
    se = s / math.sqrt(n) if n else 0.0
    if q is not None:
        value = percentile(scores, q)
        ci = _bootstrap(scores, lambda xs: percentile(xs, q)) if n > 1 else (value, value)
        return Summary(value, m, s, se, ci)
    if is_binary(scores):
        ci = wilson(math.fsum(scores), n)
    elif n > 1:
        half = t_quantile(0.975, n - 1) * se
        ci = (m - half, m + half)
    else:
        ci = (m, m)
    return Summary(m, m, s, se, ci)


# ---------------------------------------------------------------- exact tests


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial (p = 1/2) test of `wins` vs `losses`; 1.0 when both are 0."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = math.fsum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def _beta_quantile(p: float, a: float, b: float) -> float:
    """x with I_x(a, b) = p, by bisection (the CDF is monotone)."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if _betainc(a, b, mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """Exact 95% interval of a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    lo = 0.0 if k == 0 else _beta_quantile(ALPHA / 2, k, n - k + 1)
    hi = 1.0 if k == n else _beta_quantile(1 - ALPHA / 2, k + 1, n - k)
    return (lo, hi)


def mcnemar(gained: int, lost: int, n: int) -> Comparison:
    """Exact McNemar test of paired pass/fail items: `gained` items went 0 -> 1, `lost` 1 -> 0.

    The p-value is the two-sided binomial test on the discordant pairs. The interval is
    the exact conditional one that goes with it: Clopper-Pearson on the share of gains
    among the discordant pairs, mapped to a difference in pass rate ((g - l) / n).
    """
    d = gained + lost
    delta = (gained - lost) / n if n else 0.0
    p = sign_test(gained, lost)
    if d == 0:
        ci = (0.0, 0.0)
    else:
        lo, hi = clopper_pearson(gained, d)
        ci = (d / n * (2 * lo - 1), d / n * (2 * hi - 1))
    return Comparison(delta, ci, p, p < ALPHA, "exact McNemar")


# ---------------------------------------------------------------- comparisons


def _t_result(delta: float, se: float, df: float, method: str) -> Comparison:
    if se == 0.0:
        # Every paired difference is the same: no noise to weigh it against.
        significant = delta != 0.0
        return Comparison(delta, (delta, delta), 0.0 if significant else 1.0, significant, method)
    p = t_two_sided_p(delta / se, df)
    half = t_quantile(0.975, df) * se
    return Comparison(delta, (delta - half, delta + half), p, p < ALPHA, method)


def compare(
    candidate: dict[str, float], baseline: dict[str, float], q: float | None = None, seed: int = 0
) -> Comparison:
    """Candidate minus baseline on item scores keyed by item id.

    Paired when both sides scored the same items (the usual case: same suite data);
    otherwise Welch's t-test on the two samples. With `q`, the metric is the q-th
    percentile and the interval comes from a paired bootstrap over items.
    """
    paired = set(candidate) == set(baseline)
    cand, base = list(candidate.values()), list(baseline.values())
    if q is not None:
        delta = percentile(cand, q) - percentile(base, q)
        ids = sorted(candidate) if paired else []
        if len(ids) < 2:
            return Comparison(delta, None, None, False, "too few items")
        rng = random.Random(seed)
        draws = []
        for _ in range(BOOTSTRAP_SAMPLES):
            pick = [ids[rng.randrange(len(ids))] for _ in ids]
            draws.append(percentile([candidate[i] for i in pick], q) - percentile([baseline[i] for i in pick], q))
        draws.sort()
        lo, hi = percentile(draws, 2.5), percentile(draws, 97.5)
        below = sum(d <= 0 for d in draws) / len(draws)
        above = sum(d >= 0 for d in draws) / len(draws)
        p = min(1.0, 2.0 * min(below, above))
        return Comparison(delta, (lo, hi), p, lo > 0 or hi < 0, "paired bootstrap")
    if paired:
        diffs = [candidate[i] - baseline[i] for i in sorted(candidate)]
        n = len(diffs)
        if n < 2:
            return Comparison(mean(diffs), None, None, False, "too few items")
        if is_binary(cand) and is_binary(base):
            return mcnemar(sum(d > 0 for d in diffs), sum(d < 0 for d in diffs), n)
        return _t_result(mean(diffs), std(diffs) / math.sqrt(n), n - 1, "paired t-test")
    n1, n2 = len(cand), len(base)
    delta = mean(cand) - mean(base)
    if n1 < 2 or n2 < 2:
        return Comparison(delta, None, None, False, "too few items")
    v1, v2 = std(cand) ** 2 / n1, std(base) ** 2 / n2
    se = math.sqrt(v1 + v2)
    # Welch-Satterthwaite degrees of freedom.
    df = (v1 + v2) ** 2 / ((v1**2 / (n1 - 1)) + (v2**2 / (n2 - 1))) if se > 0 else n1 + n2 - 2
    return _t_result(delta, se, df, "Welch t-test")
