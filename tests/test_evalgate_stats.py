"""The gate's statistics against reference values (Student-t table, Wilson, numpy's percentile)."""

from __future__ import annotations

import math

import pytest

from tinygpt.workers.evalgate.stats import compare, percentile, std, summarize, t_quantile, t_two_sided_p, wilson


def _t_tail_by_integration(t: float, df: int, steps: int = 20000) -> float:
    """P(|T| >= t) by the midpoint rule on the density: an independent reference."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    h = t / steps
    inner = sum(c * (1 + ((i + 0.5) * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps)) * h
    return 1 - 2 * inner


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (5, 2.5706), (9, 2.2622), (29, 2.0452), (120, 1.9799)])
def test_t_quantiles_match_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("t, df", [(0.5, 3), (2.0, 5), (3.1, 12), (1.2, 40)])
def test_t_p_values_match_the_integrated_density(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(_t_tail_by_integration(t, df), abs=1e-6)


def test_percentile_interpolates_like_numpy_and_wilson_matches_its_formula():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 100], 95) == pytest.approx(88.0)
    assert percentile([7], 95) == 7
    lo, hi = wilson(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] < 1.0  # never a zero-width interval at 100%


def test_summaries_pass_fail_items_continuous_items_and_percentiles():
    s = summarize([1.0, 1.0, 0.0, 1.0])
    assert (s.mean, s.value) == (0.75, 0.75) and s.std == pytest.approx(0.5) and s.stderr == pytest.approx(0.25)
    assert s.ci95 == pytest.approx(wilson(3, 4))
    c = summarize([0.5, 0.75, 1.0, 0.25])
    half = t_quantile(0.975, 3) * std([0.5, 0.75, 1.0, 0.25]) / 2
    assert c.ci95 == pytest.approx((0.625 - half, 0.625 + half))
    p = summarize([10.0, 12.0, 11.0, 50.0, 13.0], q=95)
    assert p.value == pytest.approx(percentile([10, 12, 11, 50, 13], 95)) and p.ci95[0] <= p.value <= p.ci95[1]


def test_paired_comparison_sees_a_clear_drop_and_not_noise():
    base = {f"i{k}": 1.0 for k in range(20)}
    worse = {f"i{k}": float(k % 4 == 0) for k in range(20)}  # 5 of 20 still right
    clear = compare(worse, base)  # 15 lost, none gained: exact p = 2 / 2**15
    assert clear.delta == pytest.approx(-0.75) and clear.significant and clear.p_value == pytest.approx(2 / 2**15)
    assert clear.ci95[1] < 0 and clear.method == "exact McNemar"
    noisy = compare({**base, "i0": 0.0}, base)  # one item flipped: could be noise
    assert noisy.delta == pytest.approx(-0.05) and not noisy.significant and noisy.ci95[0] < 0 < noisy.ci95[1]
    same = compare(base, base)
    assert (same.delta, same.significant, same.p_value) == (0.0, False, 1.0)


def test_unpaired_and_percentile_comparisons():
    welch = compare({"a": 1.0, "b": 0.9, "c": 1.1}, {"x": 2.0, "y": 2.1, "z": 1.9})
    assert welch.method == "Welch t-test" and welch.significant and welch.delta == pytest.approx(-1.0)
    slow = {f"i{k}": 100.0 + k for k in range(30)}
    fast = {f"i{k}": 10.0 + k for k in range(30)}
    pct = compare(slow, fast, q=95)
    assert pct.method == "paired bootstrap" and pct.significant and pct.delta == pytest.approx(90.0)
    assert compare({"a": 1.0}, {"a": 0.0}).ci95 is None  # one item: no interval, never "clear"


def test_pass_fail_items_use_the_exact_mcnemar_test():
    """Known values: the binomial test on the discordant pairs, not a t-test on 0/±1 differences."""
    base = {f"i{k}": float(k < 30) for k in range(60)}
    better = {**base, **{f"i{k}": 1.0 for k in range(30, 35)}}  # 5 gained, 0 lost of 60
    c = compare(better, base)
    assert c.method == "exact McNemar" and c.p_value == pytest.approx(0.0625) and not c.significant
    assert c.delta == pytest.approx(5 / 60) and c.ci95[0] < 0 < c.ci95[1]  # the interval agrees with p
    seven = compare({**better, "i35": 1.0, "i36": 1.0}, base)  # 7 / 0: p = 2 / 128
    assert seven.p_value == pytest.approx(0.015625) and seven.significant and seven.ci95[0] > 0
    both = compare({"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 0.0})  # two items, both flipped
    assert both.p_value == pytest.approx(0.5) and not both.significant
    mixed = compare({**base, "i0": 0.0, "i31": 1.0, "i32": 1.0}, base)  # 2 gained, 1 lost
    assert mixed.p_value == pytest.approx(1.0) and mixed.delta == pytest.approx(1 / 60)
    assert compare(base, base).p_value == 1.0 and compare(base, base).ci95 == (0.0, 0.0)
    # 5 / 1: p = 2 * (1 + 6) / 64, as every table of the sign test has it.
    assert compare({**better, "i0": 0.0}, base).p_value == pytest.approx(14 / 64)


def test_continuous_scores_keep_the_paired_t_test():
    """Known value: paired t on differences [1, 2, 3, 4] (t = 3.873, df = 3) gives p = 0.0305."""
    base = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    cand = {"a": 2.0, "b": 4.0, "c": 6.0, "d": 8.0}
    c = compare(cand, base)
    assert c.method == "paired t-test" and c.delta == pytest.approx(2.5)
    assert c.p_value == pytest.approx(0.030466, abs=1e-5) and c.significant
    # K-pass means (0, 1/3, 2/3, 1) are not pass/fail: still the t-test.
    assert compare({"a": 2 / 3, "b": 1.0}, {"a": 1 / 3, "b": 0.0}).method == "paired t-test"
