"""Every planner returns the delta-form λ of inputs 1..K (θ = θ₀ + Σ λᵢ(θᵢ − θ₀)), compared
with an independent float64 reference computed with numpy."""

import numpy as np
import pytest

from safebasin import merge
from safebasin.errors import UsageError

RTOL = 1e-15  # the planners and the reference are both float64 closed forms


def test_lerp_returns_alpha_as_the_only_lambda():
    got = merge.lerp_coefficients(0.3)
    assert got == [0.3]
    assert all(type(x) is float for x in got)


def test_task_arithmetic_returns_the_scales_as_lambdas():
    got = merge.task_arithmetic_coefficients([0.5, -0.25, 2])
    np.testing.assert_array_equal(np.array(got, dtype=np.float64), [0.5, -0.25, 2.0])
    assert all(type(x) is float for x in got)


@pytest.mark.parametrize(("eta", "k"), [(0.25, 1), (0.25, 3), (0.01, 40), (1.0, 5)])
def test_ema_returns_the_lambdas_of_the_checkpoints_only(eta, k):
    e = np.float64(eta)
    expected = e * (1.0 - e) ** (k - np.arange(1, k + 1, dtype=np.float64))
    got = merge.ema_coefficients(eta, k)
    assert len(got) == k
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0.0)


@pytest.mark.parametrize(("eta", "k"), [(0.25, 3), (0.01, 40)])
def test_ema_anchor_weight_is_one_minus_the_sum_of_lambdas(eta, k):
    assert merge.ema_anchor_weight(eta, k) == pytest.approx((1.0 - np.float64(eta)) ** k,
                                                      rel=RTOL, abs=0.0)
    assert 1.0 - np.sum(merge.ema_coefficients(eta, k), dtype=np.float64) == pytest.approx(
        merge.ema_anchor_weight(eta, k), rel=1e-12, abs=1e-15)


def test_l2_global_returns_the_scale_onto_the_radius():
    assert merge.l2_global_coefficients(1.5, 6.0) == pytest.approx([np.float64(1.5) / 6.0],
                                                             rel=RTOL, abs=0.0)


def test_l2_global_inside_the_radius_keeps_the_whole_delta():
    assert merge.l2_global_coefficients(7.0, 6.0) == [1.0]


def test_l2_per_tensor_returns_one_lambda_per_tensor():
    got = merge.l2_per_tensor_coefficients({"a": 1.0, "b": 5.0}, {"a": 4.0, "b": 2.0})
    assert got == {"a": pytest.approx([0.25], rel=RTOL, abs=0.0), "b": [1.0]}


@pytest.mark.parametrize(("planner", "args"), [
    (merge.lerp_coefficients, (float("nan"),)),
    (merge.task_arithmetic_coefficients, ([],)),
    (merge.ema_coefficients, (0.0, 3)),
    (merge.ema_anchor_weight, (0.5, 0)),
    (merge.l2_global_coefficients, (-1.0, 2.0)),
])
def test_planner_refuses_bad_parameters(planner, args):
    with pytest.raises(UsageError):
        planner(*args)
