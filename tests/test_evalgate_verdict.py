"""The per-suite verdict: threshold against the baseline, significance, minimums and ceilings."""

from __future__ import annotations

import pytest

from tinygpt.runtime.contracts.evals import EvalSuite, ItemResult, SuiteReport
from tinygpt.workers.evalgate.scorers import MetricSpec
from tinygpt.workers.evalgate.stats import summarize
from tinygpt.workers.evalgate import judge


def report(scores: list[float], q: float | None = None, direction: str = "higher") -> SuiteReport:
    s = summarize(scores, q)
    items = [ItemResult(id=f"i{k}", score=v, passes=[v]) for k, v in enumerate(scores)]
    return SuiteReport(suite="s", metric="m", direction=direction, n=len(scores), passes=1, mean=s.mean, std=s.std,
                       stderr=s.stderr, ci95=s.ci95, items=items, value=s.value if q is not None else None)


SUITE = EvalSuite(name="s", kind="exact_match", data="d", threshold=0.1)
HIGHER = MetricSpec("higher")


def test_worse_than_the_threshold_fails_and_says_whether_it_is_clear():
    base = report([1.0] * 10)
    v = judge(SUITE, HIGHER, report([1.0] * 8 + [0.0] * 2), base)
    assert not v.passed and v.delta == pytest.approx(-0.2) and not v.significant
    assert "more than the threshold 0.1 (not statistically clear" in v.reason
    clear = judge(SUITE, HIGHER, report([0.0] * 10), base)
    assert not clear.passed and clear.significant and "statistically clear" in clear.reason


def test_within_the_threshold_or_better_passes():
    base = report([1.0] * 9 + [0.0])
    assert judge(SUITE, HIGHER, report([1.0] * 8 + [0.0] * 2), base).passed  # exactly 0.1 worse: not more than it
    better = judge(SUITE, HIGHER, report([1.0] * 10), base)
    assert better.passed and better.reason.startswith("better than the baseline by 0.1")


def test_require_significance_tolerates_a_drop_that_could_be_noise_only():
    base = report([1.0] * 10)
    noisy = judge(SUITE, HIGHER, report([1.0] * 8 + [0.0] * 2), base, require_significance=True)
    assert noisy.passed and "tolerated" in noisy.reason
    assert not judge(SUITE, HIGHER, report([0.0] * 10), base, require_significance=True).passed


def test_lower_is_better_metrics_and_ceilings():
    latency = EvalSuite(name="s", kind="latency", data="d", metric="ttft_p95_ms", threshold=50.0, minimum=400.0)
    spec = MetricSpec("lower", 95.0)
    base = report([100.0 + k for k in range(20)], 95, "lower")
    slower = judge(latency, spec, report([300.0 + k for k in range(20)], 95, "lower"), base)
    assert not slower.passed and slower.delta == pytest.approx(200.0) and slower.significant and "meets the ceiling 400" in slower.reason
    over = judge(latency, spec, report([500.0] * 20, 95, "lower"), None, no_baseline="none recorded")
    assert not over.passed and "no baseline (none recorded)" in over.reason and "misses the ceiling 400" in over.reason
    assert judge(latency, spec, report([120.0] * 20, 95, "lower"), base).passed
