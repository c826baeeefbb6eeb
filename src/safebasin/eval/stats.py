"""Confidence intervals for rates (ASR, refusal rate) measured on a few hundred prompts."""

from __future__ import annotations

import math

from ..errors import EvaluationError

Z95 = 1.959963984540054  # the standard normal 0.975 quantile: a two-sided 95% interval


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default: 95%).

    With p = successes/n: centre = (p + z²/2n) / (1 + z²/n) and
    half-width = z/(1 + z²/n) · sqrt(p(1-p)/n + z²/4n²). Unlike the normal (Wald) interval it stays
    inside [0, 1] and does not collapse to a point at 0% or 100% ASR, which matter most here.
    Same values as statsmodels' ``proportion_confint(method="wilson")``.

    Args:
        successes: count in [0, n].
        n: number of trials, at least 1.
        z: normal quantile of the two-sided level.

    Returns:
        (low, high), clipped to [0, 1].

    Raises:
        EvaluationError: n < 1 or successes outside [0, n].

    Example:
        >>> [round(x, 4) for x in wilson_interval(5, 10)]
        [0.2366, 0.7634]
    """
    if n < 1 or not 0 <= successes <= n:
        raise EvaluationError(f"a rate needs 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    # at 0/n and n/n the bound is exactly p in real arithmetic; float rounding would leave
    # 1e-17 on the wrong side of it
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


__all__ = ["wilson_interval", "Z95"]
