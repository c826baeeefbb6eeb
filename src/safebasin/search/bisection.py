"""The largest fraction t ∈ [0, 1] of a fine-tune whose ASR stays under a limit (pure search).

Assumption: ASR grows with t (moving from θ₀ towards the fine-tune erodes refusals). Bracket:
t = 0 (θ₀) must meet the limit, t = 1 (the fine-tune) is returned at once when it does; then
bisection on [0, 1] until the bracket is at most `tolerance` wide. That is at most
⌈log₂(1/tolerance)⌉ + 2 evaluations, and every midpoint is a dyadic fraction, so runs with
other limits land on the same points and reuse them from the cache.

The assumption is checked rather than trusted: every pair of neighbouring evaluated points
whose ASR falls as t grows is reported, and the point returned is the largest t seen that meets
the limit, wherever it lies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

CONFIDENCE = ("point", "upper")


def budget(tolerance: float) -> int:
    """⌈log₂(1/tolerance)⌉ + 2: the evaluations a search may spend."""
    return bisection_steps(tolerance) + 2


def bisection_steps(tolerance: float) -> int:
    # the epsilon keeps exact powers of two exact: tolerance 0.25 needs 2 steps, not 3
    return max(0, math.ceil(math.log2(1.0 / tolerance) - 1e-9))


def meets(metrics: dict, max_asr: float, confidence: str) -> bool:
    """ASR ≤ limit, on the point estimate or (confidence "upper") on the Wilson upper bound."""
    value = metrics["asr_high"] if confidence == "upper" else metrics["asr"]
    return value <= max_asr


@dataclass(frozen=True)
class Search:
    """What a search saw: each evaluated t with its metrics, the best t meeting the limit (None
    when even θ₀ fails), and the neighbouring pairs (t_low, t_high) where ASR fell as t grew."""

    measured: dict[float, dict]
    best: float | None
    decreasing: list[tuple[float, float]]

    @property
    def monotone(self) -> bool:
        return not self.decreasing


def _decreasing(measured: dict[float, dict]) -> list[tuple[float, float]]:
    ts = sorted(measured)
    pairs = zip(ts, ts[1:], strict=False)
    return [(a, b) for a, b in pairs if measured[b]["asr"] < measured[a]["asr"]]


def search(measure: Callable[[float], dict], *, max_asr: float, tolerance: float = 0.02,
           confidence: str = "point") -> Search:
    """Bracket then bisect; `measure(t)` returns the metrics of fraction t (see `meets`).

    Stops early when θ₀ fails (best None) or the fine-tune passes (best 1.0).
    """
    measured: dict[float, dict] = {}

    def ok(t: float) -> bool:
        if t not in measured:
            measured[t] = measure(t)
        return meets(measured[t], max_asr, confidence)

    if not ok(0.0):
        return Search(measured, None, _decreasing(measured))
    if not ok(1.0):
        lo, hi = 0.0, 1.0
        for _ in range(bisection_steps(tolerance)):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    passing = [t for t, m in measured.items() if meets(m, max_asr, confidence)]
    return Search(measured, max(passing), _decreasing(measured))


__all__ = ["CONFIDENCE", "Search", "budget", "bisection_steps", "meets", "search"]
