"""Planners: the delta-form λ of each method (pure numbers, no I/O).

θ₀ is always input 0, and every planner returns the λ of inputs 1..K in
θ = θ₀ + Σᵢ λᵢ(θᵢ − θ₀), the form the executor computes: a zero task vector returns θ₀ bit for
bit. The same merge as a plain weighted sum Σ cᵢ·θᵢ has c₀ = 1 − Σλᵢ and cᵢ = λᵢ (what the
recipe records as `coefficients`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import UsageError


def lerp_coefficients(alpha: float) -> list[float]:
    """θ = θ₀ + α(θ_ft − θ₀) = (1−α)·θ₀ + α·θ_ft (WiSE-FT): λ = [α]; α=1 copies θ_ft exactly."""
    if not math.isfinite(alpha):
        raise UsageError(f"`alpha` must be a finite number, got {alpha}")
    return [float(alpha)]


def task_arithmetic_coefficients(scales: Sequence[float]) -> list[float]:
    """θ = θ₀ + Σᵢ λᵢ(θᵢ − θ₀): λ is the scales themselves (negative λ allowed)."""
    if not scales or not all(math.isfinite(s) for s in scales):
        raise UsageError(f"task arithmetic needs finite scales, got {list(scales)}")
    return [float(s) for s in scales]


def ema_coefficients(eta: float, k: int) -> list[float]:
    """Closed form of θ̄ₖ = (1−η)θ̄ₖ₋₁ + ηθₖ, θ̄₀ = θ₀ over checkpoints θ₁..θ_K.

    θ̄_K = θ₀ + Σₖ λₖ(θₖ − θ₀) with λₖ = η(1−η)^(K−k), k = 1..K: each checkpoint read once,
    in one pass. θ₀ keeps c₀ = 1 − Σλₖ = (1−η)^K (`ema_anchor_weight`).
    """
    if not 0.0 < eta <= 1.0:
        raise UsageError(f"`eta` must be in (0, 1], got {eta}")
    if k < 1:
        raise UsageError("offline EMA needs at least one checkpoint after BASE")
    return [eta * (1.0 - eta) ** (k - i) for i in range(1, k + 1)]


def ema_anchor_weight(eta: float, k: int) -> float:
    """c₀ = (1−η)^K: the weight an EMA over K checkpoints keeps on θ₀ (validates like
    `ema_coefficients`)."""
    ema_coefficients(eta, k)
    return (1.0 - eta) ** k


def projection_scale(radius: float, distance: float) -> float:
    """min(1, r/‖Δ‖): the fraction of Δ = θ_ft − θ₀ that lands on the ball of radius r."""
    if distance <= radius or distance == 0.0:
        return 1.0
    return radius / distance


def l2_global_coefficients(radius: float, distance: float) -> list[float]:
    """Global projection: λ = [s], one scale s = min(1, r/‖Δ‖) for the whole model."""
    _check_radius(radius)
    return lerp_coefficients(projection_scale(radius, distance))


def l2_per_tensor_coefficients(radii: Mapping[str, float],
                               distances: Mapping[str, float]) -> dict[str, list[float]]:
    """Per-tensor projection: tensor t keeps λₜ = [min(1, rₜ/‖Δₜ‖)] of its own Δₜ."""
    for r in radii.values():
        _check_radius(r)
    return {n: lerp_coefficients(projection_scale(radii[n], d)) for n, d in distances.items()}


def _check_radius(r: float) -> None:
    if not (math.isfinite(r) and r >= 0):
        raise UsageError(f"`radius` must be a finite number >= 0, got {r}")
