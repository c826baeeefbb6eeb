"""Which merge a search runs, and what its one coefficient means.

`tune` searches a *fraction* t ∈ [0, 1] of the fine-tune: t = 0 is θ₀, t = 1 the fine-tune
itself. Each method maps t to its own coefficient and calls the Python merge API:

    lerp             α = t                 θ₀ + α(θ_ft − θ₀)
    task-arithmetic  λ = t                 θ₀ + λ(θ_ft − θ₀)
    l2-project       r = t·‖θ_ft − θ₀‖     the global projection onto the ball of radius r

    slerp            t = t                 spherical interpolation from θ₀ to θ_ft
    ties, dare-*, breadcrumbs*   λ = t     the sparse merges of the one fine-tune, scaled by λ

The non-linear ones join the table when `safebasin.merge` has them; their other parameters
(density, seed, ...) come from `method_args` (`--method-arg density=0.2`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

PathLike = str | os.PathLike
# (out, base, finetuned, coefficient, merge options) -> the recipe written; module-level
# functions (or picklable objects), so a point can carry one to a Ray or SLURM worker
Build = Callable[[Path, PathLike, PathLike, float, object], dict]


@dataclass(frozen=True)
class Method:
    """A merge with one searched coefficient.

    `parameter` names the coefficient as the merge command does; `by_distance`: the coefficient
    is t·‖θ_ft − θ₀‖ (a radius) rather than t; `args`: the method's other parameters."""

    name: str
    parameter: str
    build: Build
    by_distance: bool = False
    args: tuple[tuple[str, object], ...] = ()


def _lerp(out, base, ft, c, options) -> dict:
    from .. import merge as m

    return m.lerp(base, ft, out, alpha=c, options=options, **_extrapolating(m.lerp, c))


def _task_arithmetic(out, base, ft, c, options) -> dict:
    from .. import merge as m

    return m.task_arithmetic(base, [ft], out, scales=[c], options=options)


def _l2_project(out, base, ft, c, options) -> dict:
    from .. import merge as m

    return m.l2_project(base, ft, out, radius=c, options=options)


def _extrapolating(fn: Callable, *coefficients: float) -> dict:
    """`extrapolate=True` for a coefficient outside [0, 1], when the merge function asks for it
    (the landscape goes beyond θ₀ and the fine-tune on purpose)."""
    outside = any(not 0.0 <= c <= 1.0 for c in coefficients)
    return {"extrapolate": True} if outside and "extrapolate" in inspect.signature(
        fn).parameters else {}


_BUILTIN = {
    "lerp": Method("lerp", "alpha", _lerp),
    "task-arithmetic": Method("task-arithmetic", "scale", _task_arithmetic),
    "l2-project": Method("l2-project", "radius", _l2_project, by_distance=True),
}

def _slerp(out, base, ft, c, options) -> dict:
    from .. import merge as m

    return m.slerp(base, ft, out, t=c, options=options)


# method name -> the function in safebasin.merge; its overall scale λ is searched
_SPARSE = {"ties": "ties", "dare-linear": "dare_linear", "dare-ties": "dare_ties",
           "breadcrumbs": "breadcrumbs", "breadcrumbs-ties": "breadcrumbs_ties"}
_SCALE = "lambda_"
_FIXED = {"base", "finetuned", "out", "options", _SCALE}


@dataclass(frozen=True)
class _ScaledMerge:
    """`safebasin.merge.<function>(base, [ft], out, lambda_=c, **args)`, picklable."""

    function: str
    args: tuple[tuple[str, object], ...] = ()

    def __call__(self, out, base, ft, c, options) -> dict:
        from .. import merge as m

        return getattr(m, self.function)(base, [ft], out, **{_SCALE: c}, **dict(self.args),
                                         options=options)


def _sparse(name: str, args: dict) -> Method | None:
    from .. import merge as m

    fn = getattr(m, _SPARSE[name], None)
    if fn is None or _SCALE not in inspect.signature(fn).parameters:
        return None
    params = inspect.signature(fn).parameters
    unknown = sorted(set(args) - (set(params) - _FIXED))
    if unknown:
        raise UsageError(f"`method_args` {unknown[0]}: {name} takes "
                         f"{', '.join(sorted(set(params) - _FIXED))}")
    missing = [k for k, p in params.items() if k not in _FIXED and k not in args
               and p.default is inspect.Parameter.empty]
    if missing:
        raise UsageError(f"`method` {name} needs `method_args` {missing[0]}=VALUE")
    items = tuple(sorted(args.items()))
    return Method(name, "lambda", _ScaledMerge(_SPARSE[name], items), args=items)


def available_methods() -> list[str]:
    from .. import merge as m

    return [*_BUILTIN, *(["slerp"] if hasattr(m, "slerp") else []),
            *(n for n, f in _SPARSE.items() if hasattr(m, f))]


def get_method(name: str, args: dict | None = None) -> Method:
    """The method called `name`, with its other parameters `args` (sparse merges only).

    Raises:
        UsageError: an unknown method (naming the available ones); arguments the method does
            not take, or lacks.
    """
    from .. import merge as m

    args = dict(args or {})
    if name in _BUILTIN or (name == "slerp" and hasattr(m, "slerp")):
        if args:
            raise UsageError(f"`method` {name} takes no `method_args`")
        return _BUILTIN.get(name) or Method("slerp", "t", _slerp)
    method = _sparse(name, args) if name in _SPARSE else None
    if method is None:
        raise UsageError(f"`method` {name!r}: choose one of {', '.join(available_methods())}")
    return method


__all__ = ["Method", "available_methods", "get_method"]
