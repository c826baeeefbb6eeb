"""TIES, DARE, breadcrumbs, SLERP and model stock as Python functions that mirror the CLI.

Parameter names, defaults and semantics are mergekit's (docs/merging.md lists where they
differ). θ₀ (`base`) is always the first input. Each returns the recipe written to `out`.

Example:
    >>> from safebasin import merge
    >>> merge.ties("llama", ["llama-math", "llama-code"], "llama-ties",
    ...            density=0.2)                                           # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import UsageError
from .api import PathLike, Planned, run_merge
from .geometry import plan_model_stock, plan_slerp
from .plan import MergeOptions
from .select import STATS_BUDGET
from .sparse import METHODS, SparseParams, plan_sparse

__all__ = ["breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties", "model_stock",
           "slerp", "sparse_merge", "ties"]


def _per_model(value: float | Sequence[float] | None, k: int, what: str,
               default: float) -> tuple[float, ...]:
    """One value for every fine-tune, or one per fine-tune."""
    if value is None:
        return (default,) * k
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) == 1:
        values = values * k
    if len(values) != k:
        raise UsageError(f"{len(values)} values of {what} for {k} fine-tuned models; give one "
                         "value, or one per model")
    return tuple(values)


def _csv(xs: Sequence[float]) -> str:
    return ",".join(repr(x) for x in xs)


def sparse_merge(method: str, base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
                 density: float | Sequence[float], weights: Sequence[float] | None = None,
                 lambda_: float = 1.0, normalize: bool | None = None,
                 gamma: float | Sequence[float] | None = None, seed: int | None = None,
                 rescale: str | None = None, options: MergeOptions | None = None,
                 budget: int = STATS_BUDGET) -> dict:
    """Any of mergekit's generalized task arithmetic methods that safebasin implements:
    "ties", "dare-linear", "dare-ties", "breadcrumbs", "breadcrumbs-ties" (see `sparse`), and
    "task-arithmetic" in mergekit's form (weights, λ, normalize; give density=1).

    Args:
        density: fraction of each task vector kept, in (0, 1]; one value or one per model.
        weights: wᵢ per fine-tune (default 1 each; mergekit requires them).
        lambda_: scale of the merged task vector (mergekit's `lambda`).
        normalize: divide by the summed weights; None: the method's mergekit default.
        gamma: breadcrumbs' fraction of largest magnitudes dropped (default 0.01), ≥ 0.
        seed: DARE's seed (required for DARE).
        rescale: DARE's rescaling of what it keeps: "density" (÷ density, the paper's; the
            default), "l1" (mergekit's `rescale: true`: match each tensor's L1 norm, one
            more statistics pass) or "none".
        budget: bytes of task-vector bits selected in memory per tensor; larger tensors use
            the two-pass radix selection (same result).
    """
    m = METHODS[method]
    k = len(finetuned)
    if k < 1:
        raise UsageError(f"{method} needs BASE and at least one fine-tuned model")
    params = SparseParams(
        weights=_per_model(weights, k, "weights", 1.0),
        densities=_per_model(density, k, "density", 1.0),
        gammas=_per_model(gamma, k, "gamma", 0.01) if m.sparsify == "band" else (),
        lambda_=float(lambda_), normalize=m.normalize if normalize is None else normalize,
        rescale=(rescale or "density") if m.sparsify == "random" else "none",
        seed=seed if m.sparsify == "random" else None)
    params.check(m)
    recorded = {"weights": list(params.weights), "density": list(params.densities),
                "lambda": params.lambda_, "normalize": params.normalize}
    flags = ["--density", _csv(params.densities), "--weights", _csv(params.weights),
             "--lambda", repr(params.lambda_),
             "--normalize" if params.normalize else "--no-normalize"]
    if m.sparsify == "none":  # task arithmetic keeps everything: no density to record
        del recorded["density"]
        flags = flags[2:]
    if m.sparsify == "band":
        recorded["gamma"] = list(params.gammas)
        flags += ["--gamma", _csv(params.gammas)]
    if m.sparsify == "random":
        recorded.update(seed=params.seed, rescale=params.rescale)
        flags += ["--seed", str(params.seed), "--rescale", params.rescale]

    def planner(inputs):
        ops, passes = plan_sparse(inputs, m, params, budget=budget)
        return Planned([params.lambda_ * w for w in params.weights],
                       {"statistics_passes": passes}, ops=ops, formula=m.formula,
                       cli_args=flags)

    return run_merge(method, recorded, [base, *finetuned], out, options or MergeOptions(),
                     planner)


def ties(base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
         density: float | Sequence[float], weights: Sequence[float] | None = None,
         lambda_: float = 1.0, normalize: bool = True,
         options: MergeOptions | None = None) -> dict:
    """TIES-merging: magnitude top-k per tensor, sign election by weighted sum, disjoint
    mean (normalize), scaled by λ."""
    return sparse_merge("ties", base, finetuned, out, density=density, weights=weights,
                        lambda_=lambda_, normalize=normalize, options=options)


def dare_linear(base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
                density: float | Sequence[float], seed: int,
                weights: Sequence[float] | None = None, lambda_: float = 1.0,
                normalize: bool = False, rescale: str = "density",
                options: MergeOptions | None = None) -> dict:
    """DARE: drop each task-vector element with probability 1 − density (a seeded hash of
    tensor name and index), rescale the rest by 1/density, then a weighted sum."""
    return sparse_merge("dare-linear", base, finetuned, out, density=density, weights=weights,
                        lambda_=lambda_, normalize=normalize, seed=seed, rescale=rescale,
                        options=options)


def dare_ties(base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
              density: float | Sequence[float], seed: int,
              weights: Sequence[float] | None = None, lambda_: float = 1.0,
              normalize: bool = False, rescale: str = "density",
              options: MergeOptions | None = None) -> dict:
    """DARE's drop and rescale, then TIES' sign election."""
    return sparse_merge("dare-ties", base, finetuned, out, density=density, weights=weights,
                        lambda_=lambda_, normalize=normalize, seed=seed, rescale=rescale,
                        options=options)


def breadcrumbs(base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
                density: float | Sequence[float], gamma: float | Sequence[float] = 0.01,
                weights: Sequence[float] | None = None, lambda_: float = 1.0,
                normalize: bool = False, options: MergeOptions | None = None) -> dict:
    """Model breadcrumbs: drop the largest γ and the smallest magnitudes of each task vector
    (density kept), then a weighted sum."""
    return sparse_merge("breadcrumbs", base, finetuned, out, density=density, gamma=gamma,
                        weights=weights, lambda_=lambda_, normalize=normalize, options=options)


def breadcrumbs_ties(base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
                     density: float | Sequence[float], gamma: float | Sequence[float] = 0.01,
                     weights: Sequence[float] | None = None, lambda_: float = 1.0,
                     normalize: bool = False, options: MergeOptions | None = None) -> dict:
    """Breadcrumbs' band, then TIES' sign election."""
    return sparse_merge("breadcrumbs-ties", base, finetuned, out, density=density,
                        gamma=gamma, weights=weights, lambda_=lambda_, normalize=normalize,
                        options=options)


def slerp(base: PathLike, other: PathLike, out: PathLike, *, t: float,
          options: MergeOptions | None = None) -> dict:
    """Spherical interpolation per tensor from θ₀ (t = 0) to OTHER (t = 1); nearly parallel
    tensors (|cos| > 0.9995) are interpolated linearly, as mergekit does."""
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise UsageError(f"t must be in [0, 1], got {t}")

    def planner(inputs):
        ops, linear = plan_slerp(inputs, t)
        return Planned({n: [0.0] for n in inputs[0].names}, {"lerped_tensors": linear}, ops=ops,
                       formula="θ = sin((1−t)Ω)/sin Ω·θ₀ + sin(tΩ)/sin Ω·θ₁ per tensor, "
                       "cos Ω = θ₀·θ₁/(‖θ₀‖‖θ₁‖); lerp where |cos Ω| > 0.9995",
                       cli_args=["--t", repr(float(t))])

    return run_merge("slerp", {"t": float(t)}, [base, other], out,
                     options or MergeOptions(), planner, roles=["base", "other"])


def model_stock(base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
                options: MergeOptions | None = None) -> dict:
    """Model stock: θ = t·mean(θᵢ) + (1 − t)·θ₀ per tensor, t from the mean pairwise cosine
    of the task vectors (needs at least two fine-tunes)."""
    if len(finetuned) < 2:
        raise UsageError(f"model-stock needs BASE and at least two fine-tuned models, got "
                         f"{len(finetuned)}")

    def planner(inputs):
        ops, ts = plan_model_stock(inputs)
        k = len(inputs) - 1
        return Planned({n: [ts.get(n, 0.0) / k] * k for n in inputs[0].names}, {"t": ts},
                       ops=ops, formula="θ = t·(Σᵢ θᵢ)/N + (1 − t)·θ₀, t = N·cos/(1 + (N−1)"
                       "·cos), cos = mean pairwise cosine of τᵢ = θᵢ − θ₀, per tensor")

    return run_merge("model-stock", {}, [base, *finetuned], out, options or MergeOptions(),
                     planner)
