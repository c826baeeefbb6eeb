"""The EMA's anchor / path-average split against a float64 reference on a tiny trajectory."""

from __future__ import annotations

import torch

from safebasin.sweep.decompose import (
    anchor_weight,
    path_average_from_ema_scale,
    path_average_scales,
)


def _trajectory(k: int = 5, shape=(4, 3)) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(shape, generator=g, dtype=torch.float64)
    steps = [theta0 + 0.3 * (i + 1) * torch.randn(shape, generator=g, dtype=torch.float64)
             for i in range(k)]
    return theta0, steps


def _ema(theta0: torch.Tensor, steps: list[torch.Tensor], eta: float) -> torch.Tensor:
    shadow = theta0.clone()
    for theta in steps:
        shadow = (1 - eta) * shadow + eta * theta
    return shadow


def test_anchor_weight_is_one_minus_eta_to_the_updates():
    assert anchor_weight(0.25, 6) == (0.75) ** 6


def test_the_ema_is_the_anchor_plus_the_path_average():
    theta0, steps = _trajectory()
    eta, k = 0.25, len(steps)
    c0 = anchor_weight(eta, k)
    # θ̃ as task arithmetic over the checkpoints: θ₀ + Σ sₖ(θₖ − θ₀) with Σ sₖ = 1
    scales = path_average_scales(eta, k)
    path = theta0 + sum(s * (t - theta0) for s, t in zip(scales, steps, strict=True))
    reference = _ema(theta0, steps, eta)
    torch.testing.assert_close(c0 * theta0 + (1 - c0) * path, reference, rtol=0, atol=1e-12)
    assert abs(sum(scales) - 1.0) < 1e-12


def test_the_path_average_from_the_ema_equals_the_one_from_the_trajectory():
    theta0, steps = _trajectory()
    eta, k = 0.1, len(steps)
    reference = sum(s * t for s, t in zip(path_average_scales(eta, k), steps, strict=True))
    ema = _ema(theta0, steps, eta)
    from_ema = theta0 + path_average_from_ema_scale(eta, k) * (ema - theta0)
    torch.testing.assert_close(from_ema, reference, rtol=0, atol=1e-12)
    assert from_ema.dtype == torch.float64


def test_anchor_lerp_uses_the_anchor_weight_on_the_final_weights():
    theta0, steps = _trajectory()
    eta, k = 0.25, len(steps)
    c0 = anchor_weight(eta, k)
    lerped = theta0 + (1 - c0) * (steps[-1] - theta0)
    torch.testing.assert_close(lerped, c0 * theta0 + (1 - c0) * steps[-1], rtol=0, atol=1e-12)
    # it differs from the EMA unless the trajectory is a straight line
    assert (lerped - _ema(theta0, steps, eta)).abs().max() > 0.01
