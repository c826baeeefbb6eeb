"""The paired hierarchical bootstrap: hand-computed cases and its invariants."""

from __future__ import annotations

import numpy as np
import pytest

from safebasin.errors import UsageError
from safebasin.sweep.bootstrap import paired_bootstrap


def test_identical_arms_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(1)
    a = [rng.integers(0, 2, size=(3, 40)).tolist() for _ in range(3)]
    interval = paired_bootstrap(a, a, n_boot=500, seed=0)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_one_world_one_seed_two_prompts_matches_the_hand_computed_distribution():
    # d = [1, 0]: a resampled mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles are 0 and 1 and the estimate is 1/2
    interval = paired_bootstrap([[[1, 0]]], [[[0, 0]]], n_boot=4000, seed=0)
    assert interval.estimate == pytest.approx(0.5, abs=1e-12)
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_worlds_are_resampled_not_only_prompts():
    # world 0 always loses, world 1 always wins, 100 prompts each: a prompt-only bootstrap
    # would be narrow around 1/2; resampling two worlds gives 0, 1/2, 1 (p = 1/4, 1/2, 1/4)
    zeros, ones = np.zeros((2, 100)), np.ones((2, 100))
    interval = paired_bootstrap([zeros, ones], [zeros, zeros], n_boot=4000, seed=0)
    assert interval.estimate == pytest.approx(0.5, abs=1e-12)
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_a_constant_shift_gives_that_shift_with_zero_width():
    a = [np.full((3, 10), 0.75), np.full((2, 7), 0.75)]  # ragged worlds are allowed
    b = [np.full((3, 10), 0.25), np.full((2, 7), 0.25)]
    interval = paired_bootstrap(a, b, n_boot=200, seed=3)
    assert (interval.low, interval.estimate, interval.high) == pytest.approx((0.5, 0.5, 0.5),
                                                                             abs=1e-12)
    assert interval.excludes_zero


def test_estimate_weights_worlds_equally_and_seeds_equally_within_a_world():
    a = [np.array([[1.0, 1.0]]), np.array([[0.0, 0.0, 0.0, 1.0]] * 2)]
    b = [np.zeros((1, 2)), np.zeros((2, 4))]
    # world means 1 and 1/4 -> (1 + 0.25) / 2
    assert paired_bootstrap(a, b, n_boot=10).estimate == pytest.approx(0.625, abs=1e-12)


def test_the_same_seed_gives_the_same_interval():
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 2, size=(3, 30)) for _ in range(3)]
    b = [rng.integers(0, 2, size=(3, 30)) for _ in range(3)]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)


def test_arms_of_different_shapes_are_refused():
    with pytest.raises(UsageError, match="world 0 has outcomes of shape"):
        paired_bootstrap([np.zeros((2, 3))], [np.zeros((2, 4))])
