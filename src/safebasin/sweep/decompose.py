"""The EMA split into an anchor and a path average: pure coefficients, no I/O.

An EMA with weight η over K updates, started at θ₀, is θ̄ = c₀θ₀ + Σₖ cₖθₖ with c₀ = (1−η)^K
and cₖ = η(1−η)^(K−k) (`merge.ema_anchor_weight`, `merge.ema_coefficients`). Since the cₖ
sum to 1 − c₀,

    θ̄ = c₀·θ₀ + (1 − c₀)·θ̃,    θ̃ = Σₖ cₖθₖ / (1 − c₀)

where θ̃, the *path average*, is a normalised weighted average of the trajectory alone. The
study builds three models from this split, to tell the pull toward θ₀ from the path:

- `path-average`: θ̃ itself, task arithmetic over the trajectory checkpoints with scales
  cₖ/(1 − c₀) (they sum to 1, so θ₀'s own coefficient is 0): the path without the anchor;
- `anchor-lerp`: lerp(θ₀, θ_final; 1 − c₀), the same anchor weight on the straight line to
  the final weights instead of the path;
- `path-average-lerp`: lerp(θ₀, θ̃) scaled to the EMA's distance. By the identity above this
  is the EMA itself (the scale is 1 − c₀); the study builds it anyway, as a check that the
  split is exact.

When the trajectory was not saved at every EMA update (per-step EMAs over long runs), θ̃ is
recovered from the online EMA by the same identity: θ̃ = θ₀ + (θ̄ − θ₀)/(1 − c₀).
"""

from __future__ import annotations

from ..errors import UsageError
from ..merge import ema_anchor_weight, ema_coefficients


def anchor_weight(eta: float, updates: int) -> float:
    """c₀ = (1 − η)^K: the weight the EMA keeps on θ₀ after K updates."""
    return ema_anchor_weight(eta, updates)


def path_average_scales(eta: float, updates: int) -> list[float]:
    """cₖ/(1 − c₀) for k = 1..K: the task-arithmetic scales of θ̃ over the K checkpoints.

    Raises:
        UsageError: η = 1 with K ≥ 1 is fine (c₀ = 0); η out of (0, 1] or K < 1 is not.
    """
    rest = 1.0 - ema_anchor_weight(eta, updates)
    if rest <= 0.0:
        raise UsageError(f"EMA with eta={eta} over {updates} updates keeps all its weight on "
                         "theta0; there is no path average")
    return [ck / rest for ck in ema_coefficients(eta, updates)]


def path_average_from_ema_scale(eta: float, updates: int) -> float:
    """1/(1 − c₀): the task-arithmetic scale of θ̄ that gives θ̃ (θ̃ = θ₀ + (θ̄ − θ₀)/(1 − c₀))."""
    rest = 1.0 - anchor_weight(eta, updates)
    if rest <= 0.0:
        raise UsageError(f"EMA with eta={eta} over {updates} updates never left theta0")
    return 1.0 / rest


__all__ = ["anchor_weight", "path_average_scales", "path_average_from_ema_scale"]
