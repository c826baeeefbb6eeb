"""Find the knob value at which a model's utility matches a target: bisection, capped tries.

The study compares methods at equal task accuracy as well as at equal distance: the
task-arithmetic scale λ, the per-tensor L2 radius factor ρ and the L2-to-init strength log C
are each searched so that the model's utility is within a tolerance of the EMA's. Utility is
assumed monotone in the knob over the bracket (more of the task vector, more task accuracy);
the search bisects the bracket, starting from an optional first guess (the matched-distance
value, usually close), keeps every try, and returns the closest one with its gap, so a target
that cannot be reached is reported as such rather than silently replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Match:
    """The outcome of a search: the chosen knob, its utility, the gap, the evaluations made."""

    value: float
    utility: float
    gap: float  # utility − target (signed)
    tries: int  # evaluations made by this search (known endpoints and cached values excluded)
    matched: bool  # |gap| ≤ tolerance


def _result(known: dict[float, float], x: float, target: float, tolerance: float,
            tries: int) -> Match:
    u = known[x]
    return Match(value=x, utility=u, gap=u - target, tries=tries,
                 matched=abs(u - target) <= tolerance)


def match_utility(evaluate: Callable[[float], float], target: float, *, low: float,
                  high: float, tolerance: float, max_tries: int, increasing: bool = True,
                  start: float | None = None,
                  known: dict[float, float] | None = None) -> Match:
    """The knob x in [low, high] whose utility `evaluate(x)` is closest to `target`.

    Args:
        evaluate: utility of the model built with knob x (the expensive call).
        target: the utility to match (e.g. the EMA's task accuracy, in [0, 1]).
        low, high: the bracket.
        tolerance: stop when |utility − target| ≤ tolerance (0.02: two points of accuracy).
        max_tries: at most this many calls to `evaluate`.
        increasing: utility grows with x (False: it falls, as with the L2-to-init strength).
        start: the first x to try (None: the middle of the bracket).
        known: x → utility already measured (endpoints, earlier searches); used, not counted,
            and updated with every new evaluation.
    """
    known = {} if known is None else known
    tries = 0

    def measure(x: float) -> float:
        nonlocal tries
        if x not in known:
            known[x] = evaluate(x)
            tries += 1
        return known[x]

    anchor = start if start is not None else (low + high) / 2.0

    def best() -> float:  # the nearest utility; on a tie, the knob nearest the first guess
        inside = [x for x in known if low <= x <= high]
        return min(inside, key=lambda x: (abs(known[x] - target), abs(x - anchor), x))

    lo, hi = low, high
    ends = [known[e] for e in (low, high) if e in known]
    if len(ends) == 2 and not min(ends) - tolerance <= target <= max(ends) + tolerance:
        return _result(known, best(), target, tolerance, 0)  # out of reach: no tries spent
    x = start if start is not None and low <= start <= high else (low + high) / 2.0
    while True:
        u = measure(x)
        if abs(u - target) <= tolerance:
            break
        if (u < target) == increasing:  # too little utility: move toward more
            lo = x
        else:
            hi = x
        x = (lo + hi) / 2.0
        if (tries >= max_tries and x not in known) or hi - lo <= 1e-9 * max(1.0, abs(hi)):
            break
    return _result(known, best(), target, tolerance, tries)


__all__ = ["Match", "match_utility"]
