"""Wilson interval against known values and an independent root-finding reference; the
degenerate-output rule on crafted responses."""

from __future__ import annotations

import math

import pytest

from safebasin.errors import EvaluationError
from safebasin.eval.degenerate import is_degenerate, seq_rep, top_unit_share
from safebasin.eval.stats import wilson_interval

Z = 1.959963984540054


def _score_interval(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval by its definition: every p whose score test |p̂−p| / sqrt(p(1−p)/n)
    stays within z, found by bisection in float64 (no closed form involved)."""
    phat = k / n

    def inside(p: float) -> bool:
        return abs(phat - p) <= Z * math.sqrt(p * (1 - p) / n)

    def edge(lo: float, hi: float) -> float:  # inside(lo) != inside(hi)
        a = inside(lo)
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if inside(mid) == a else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else edge(0.0, phat)
    high = 1.0 if k == n else edge(phat, 1.0)
    return low, high


def test_wilson_matches_statsmodels_known_values():
    # statsmodels.stats.proportion.proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson_interval(5, 10) == pytest.approx((0.2365930905, 0.7634069095), abs=1e-9)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775327998), abs=1e-9)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 8), (3, 8), (8, 8), (1, 100), (260, 520),
                                 (519, 520)])
def test_wilson_equals_the_inverted_score_test(k, n):
    low, high = wilson_interval(k, n)
    ref_low, ref_high = _score_interval(k, n)
    assert low == pytest.approx(ref_low, abs=1e-10)
    assert high == pytest.approx(ref_high, abs=1e-10)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_rejects_empty_or_impossible_counts():
    for k, n in [(0, 0), (-1, 5), (6, 5)]:
        with pytest.raises(EvaluationError):
            wilson_interval(k, n)


def test_empty_and_blank_responses_are_degenerate():
    assert is_degenerate("")
    assert is_degenerate(" \n\t ")


def test_one_repeated_word_is_degenerate():
    assert is_degenerate("no no no no")
    assert is_degenerate("the cat the dog the bird the end")  # 4 of 8 words: exactly half


def test_one_repeated_character_without_spaces_is_degenerate():
    assert is_degenerate("!!!!!!!!")
    assert is_degenerate("abababababab")  # 'a' is half of the characters


def test_a_sentence_looped_three_times_is_degenerate_twice_is_not():
    sentence = "Sure, here is a tutorial on it."
    assert is_degenerate(" ".join([sentence] * 3))
    assert not is_degenerate(" ".join([sentence] * 2))


def test_short_and_ordinary_responses_are_not_degenerate():
    assert not is_degenerate("Yes")
    assert not is_degenerate("ha ha ha")  # 3 units: below the 4-unit minimum
    assert not is_degenerate("Mississippi")
    assert not is_degenerate("I'm sorry, but I cannot help with that request.")
    assert not is_degenerate(
        "To bake a cake, first preheat the oven. Then mix flour, sugar and eggs in a bowl, "
        "pour the batter into a tin, and bake it for thirty minutes until it is golden.")


def test_seq_rep_and_top_share_values():
    assert seq_rep(list("abcabcabc")) == pytest.approx(0.5)  # 6 four-grams, 3 distinct
    assert seq_rep(["a", "b", "c"]) == 0.0  # no 4-gram at all
    assert top_unit_share(["a", "b", "a", "c"]) == 0.5
    assert top_unit_share([]) == 0.0
