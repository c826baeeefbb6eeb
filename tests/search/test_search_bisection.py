"""The bisection itself, on synthetic ASR functions of the fraction t (no models)."""

from __future__ import annotations

import pytest

from safebasin.search.bisection import budget, search


def linear(t: float) -> dict:
    return {"asr": t, "asr_low": max(0.0, t - 0.1), "asr_high": min(1.0, t + 0.1)}


@pytest.mark.parametrize("limit", [0.013, 0.3, 0.5, 0.77, 0.99])
@pytest.mark.parametrize("tolerance", [0.1, 0.02, 0.25])
def test_search_finds_known_threshold_within_tolerance_and_budget(limit, tolerance):
    s = search(linear, max_asr=limit, tolerance=tolerance)
    assert s.best is not None and s.best <= limit  # never above the threshold
    assert limit - s.best <= tolerance
    assert len(s.measured) <= budget(tolerance)
    assert s.monotone


def test_budget_is_ceil_log2_plus_two():
    assert [budget(t) for t in (0.5, 0.25, 0.1, 0.02, 0.01)] == [3, 4, 6, 8, 9]


def test_search_stops_at_the_finetune_when_it_passes():
    s = search(lambda t: {"asr": 0.1 * t, "asr_low": 0.0, "asr_high": 0.2}, max_asr=0.5)
    assert s.best == 1.0 and sorted(s.measured) == [0.0, 1.0]


def test_search_stops_when_theta0_fails():
    s = search(lambda t: {"asr": 0.4 + t / 2, "asr_low": 0.3, "asr_high": 0.5}, max_asr=0.3)
    assert s.best is None and list(s.measured) == [0.0]


def test_upper_confidence_requires_the_wilson_upper_bound_under_the_limit():
    point = search(linear, max_asr=0.3, tolerance=0.01)
    upper = search(linear, max_asr=0.3, tolerance=0.01, confidence="upper")
    assert 0.29 <= point.best <= 0.3
    assert 0.19 <= upper.best <= 0.2  # asr_high = t + 0.1


def test_non_monotone_asr_is_reported_and_the_best_passing_point_returned():
    def bumpy(t: float) -> dict:  # a hump of ASR around t = 0.5, then low again
        asr = 0.9 if 0.4 < t < 0.6 else 0.2 * t
        return {"asr": asr, "asr_low": asr, "asr_high": asr}

    s = search(bumpy, max_asr=0.15, tolerance=0.02)
    assert not s.monotone
    assert (0.5, 1.0) in s.decreasing  # 0.9 at t=0.5, 0.2 at t=1
    assert s.best == max(t for t, m in s.measured.items() if m["asr"] <= 0.15)
