"""The matched-utility search on synthetic monotone functions."""

from __future__ import annotations

import math

import pytest

from safebasin.sweep.matching import match_utility


def _counting(f):
    calls = []

    def evaluate(x: float) -> float:
        calls.append(x)
        return f(x)

    return evaluate, calls


def test_bisection_finds_the_knob_of_a_linear_utility_within_tolerance():
    evaluate, calls = _counting(lambda x: x)  # utility = λ
    m = match_utility(evaluate, 0.3, low=0.0, high=1.0, tolerance=0.02, max_tries=8)
    # 0.5, 0.25, 0.375, 0.3125: the fourth try is within 0.02 of 0.3
    assert calls == [0.5, 0.25, 0.375, 0.3125]
    assert m.value == pytest.approx(0.3125, abs=1e-12)
    assert m.gap == pytest.approx(0.0125, abs=1e-12) and m.matched and m.tries == 4


def test_a_decreasing_utility_moves_the_other_way():
    # utility falls with log C, as with the L2-to-init strength
    evaluate, _ = _counting(lambda x: 1.0 / (1.0 + math.exp(2.0 * (x + 2.0))))
    target = 0.7
    m = match_utility(evaluate, target, low=-5.0, high=0.0, tolerance=0.01, max_tries=10,
                      increasing=False)
    assert m.matched and abs(m.utility - target) <= 0.01
    assert m.value == pytest.approx(-2.0 - math.log(target / (1 - target)) / 2.0, abs=0.05)


def test_the_first_try_is_the_given_start_and_cached_values_are_free():
    evaluate, calls = _counting(lambda x: x)
    known = {0.0: 0.0, 1.0: 1.0}
    m = match_utility(evaluate, 0.6, low=0.0, high=1.0, tolerance=0.02, max_tries=5,
                      start=0.59, known=known)
    assert calls == [0.59] and m.tries == 1 and m.value == 0.59
    assert known[0.59] == 0.59


def test_the_cap_on_tries_is_kept_and_the_closest_try_is_returned_unmatched():
    evaluate, calls = _counting(lambda x: 0.0 if x < 0.7001 else 1.0)  # a step: no match
    m = match_utility(evaluate, 0.5, low=0.0, high=1.0, tolerance=0.02, max_tries=3)
    assert len(calls) == 3 and m.tries == 3
    assert not m.matched and abs(m.gap) == pytest.approx(0.5)


def test_a_target_outside_the_known_endpoints_spends_no_tries():
    evaluate, calls = _counting(lambda x: x)
    m = match_utility(evaluate, 0.99, low=0.0, high=1.0, tolerance=0.02, max_tries=6,
                      known={0.0: 0.1, 1.0: 0.9})
    assert calls == [] and m.value == 1.0 and m.gap == pytest.approx(-0.09)
    assert not m.matched
