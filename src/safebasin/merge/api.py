"""The four merges as Python functions that mirror the CLI.

Each opens its inputs (headers only), asks a planner for coefficients, and hands the plan to the
one streaming executor. θ₀ (`base`) is always the first input.

Example:
    >>> from safebasin import merge
    >>> merge.lerp("llama-chat", "llama-ft", "llama-wise", alpha=0.5)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import Checkpoint, open_checkpoint, trajectory_folders
from ..errors import UsageError
from .coefficients import (
    ema_coefficients,
    l2_global_coefficients,
    l2_per_tensor_coefficients,
    lerp_coefficients,
    task_arithmetic_coefficients,
)
from .distance import tensor_distances
from .ema_profile import POWER_EMA_FORMULA, power_ema_plan
from .executor import execute
from .ops import TensorOp
from .plan import MergeOptions, build_plan

PathLike = str | os.PathLike


def _describe(role: str, ckpt: Checkpoint) -> dict:
    """An input as the recipe records it: its local path plus where it came from (Hub id and
    commit sha, LoRA adapter)."""
    return {"role": role, "path": str(Path(ckpt.path).absolute()), **ckpt.source}


@dataclass
class Planned:
    """A planner's answer: delta-form λ of inputs 1..K (global, or per tensor by name), what
    it adds to the recipe's parameters, the ops of non-linear tensors, and the formula the
    model card shows (None: the linear merge's Σ cᵢ·θᵢ)."""

    lambdas: Sequence[float] | Mapping[str, Sequence[float]]
    extra: dict = field(default_factory=dict)
    ops: Mapping[str, TensorOp] | None = None
    formula: str | None = None
    cli_args: Sequence[str] = ()  # the method's flags, for the card's reproduce command


def _full_form(lambdas: Sequence[float]) -> list[float]:
    return [1.0 - math.fsum(lambdas), *map(float, lambdas)]


def run_merge(method: str, parameters: dict, paths: Sequence[PathLike], out: PathLike,
              options: MergeOptions, planner: Callable[[list[Checkpoint]], Planned],
              *, roles: Sequence[str] | None = None) -> dict:
    """Open the inputs (θ₀ first), plan, execute; always close the inputs. Returns the recipe.

    `planner(checkpoints)` may run statistics passes (`collect_statistics`) and returns a
    `Planned` (delta-form λ). The recipe records the same merge as full-form `coefficients`
    (θ₀ first, c₀ = 1 − Σλ). `roles` name the inputs in the recipe (default: "base", then
    "finetuned").
    """
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(paths[0], allow_pickle=options.allow_pickle))
        others = [stack.enter_context(open_checkpoint(p, allow_pickle=options.allow_pickle,
                                                      base=base)) for p in paths[1:]]
        inputs = [base, *others]
        planned = planner(inputs)
        plans = build_plan(inputs, planned.lambdas, options, ops=planned.ops)
        lam = planned.lambdas
        coefficients = ({n: _full_form(v) for n, v in lam.items()}
                        if isinstance(lam, Mapping) else _full_form(lam))
        roles = roles or ["base", *(["finetuned"] * len(others))]
        recipe = {
            "method": method,
            "parameters": {**parameters, **planned.extra},
            "inputs": [_describe(r, c) for r, c in zip(roles, inputs, strict=True)],
            "coefficients": coefficients,
            "options": {"dtype": options.dtype, "shard_size": options.shard_size,
                        "vocab_mismatch": options.vocab_mismatch,
                        "allow_nonfinite": options.allow_nonfinite,
                        "allow_pickle": options.allow_pickle},
        }
        if planned.cli_args:
            recipe["cli_args"] = list(planned.cli_args)
        if planned.formula:
            recipe["formula"] = planned.formula
            if planned.ops:  # the λ above are not what a non-linear merge computes
                del recipe["coefficients"]
        return execute(plans, inputs, out, options=options, recipe=recipe)


def lerp(base: PathLike, finetuned: PathLike, out: PathLike, *, alpha: float,
         options: MergeOptions | None = None, extrapolate: bool = False) -> dict:
    """θ = θ₀ + α(θ_ft − θ₀) (WiSE-FT). Returns the recipe written to `out`.

    α in [0, 1] interpolates; outside it the merge extrapolates beyond θ_ft or θ₀, which must be
    asked for with `extrapolate` (a typo like 50 for 0.50 would otherwise pass silently).

    Raises:
        UsageError: α not finite, or outside [0, 1] without `extrapolate`.
    """
    lambdas = lerp_coefficients(alpha)  # validates α
    if not extrapolate and not 0.0 <= alpha <= 1.0:
        raise UsageError(f"`alpha` {alpha} is outside [0, 1], which extrapolates beyond "
                         f"{'θ_ft' if alpha > 1 else 'θ₀'}; pass `extrapolate` if that is "
                         "meant")
    return run_merge("lerp", {"alpha": alpha}, [base, finetuned], out,
                     options or MergeOptions(), lambda _: Planned(lambdas))


def task_arithmetic(base: PathLike, finetuned: Sequence[PathLike], out: PathLike, *,
                    scales: Sequence[float], options: MergeOptions | None = None) -> dict:
    """θ = θ₀ + Σᵢ λᵢ(θᵢ − θ₀); one scale per fine-tune, or one scale for all."""
    if not finetuned:
        raise UsageError("task arithmetic needs at least one fine-tuned checkpoint")
    scales = list(scales)
    if len(scales) == 1:
        scales = scales * len(finetuned)
    if len(scales) != len(finetuned):
        raise UsageError(f"{len(scales)} scales for {len(finetuned)} fine-tuned checkpoints; "
                         "give one scale, or one per checkpoint")
    lambdas = task_arithmetic_coefficients(scales)  # validates λ
    return run_merge("task-arithmetic", {"scales": scales}, [base, *finetuned], out,
                     options or MergeOptions(), lambda _: Planned(lambdas))


def l2_project(base: PathLike, finetuned: PathLike, out: PathLike, *,
               radius: float | None = None, match: PathLike | None = None,
               per_tensor: bool = False, match_scale: float = 1.0,
               options: MergeOptions | None = None) -> dict:
    """θ = θ₀ + min(1, r/‖Δ‖)·Δ with Δ = θ_ft − θ₀, globally or per tensor.

    The radius is given (`radius`, global only) or matched to `match`'s distance to θ₀:
    globally r = ‖θ_ref − θ₀‖, or per tensor rₜ = ‖θ_ref,t − θ₀,t‖, each times `match_scale`
    (ρ ≥ 0; sweeps search ρ to match a utility). Needs one statistics pass over θ₀ and θ_ft
    (and θ_ref) before the merge.
    """
    options = options or MergeOptions()
    if (radius is None) == (match is None):
        raise UsageError("l2-project needs exactly one of `radius` or `match`")
    if per_tensor and radius is not None:
        raise UsageError("`per_tensor` needs `match`: one radius for every tensor is "
                         "rarely meant; use the global projection with `radius`")

    def plan(inputs: list[Checkpoint]):
        base_ck, ft = inputs
        d_ft = tensor_distances(base_ck, ft, vocab_mismatch=options.vocab_mismatch)
        extra: dict = {"distance_finetuned": d_ft.global_l2}
        if match is not None:
            with open_checkpoint(match, allow_pickle=options.allow_pickle, base=base_ck) as ref:
                d_ref = tensor_distances(base_ck, ref, vocab_mismatch=options.vocab_mismatch)
                extra["match"] = str(Path(ref.path).absolute())
                if ref.source:
                    extra["match_source"] = dict(ref.source)
            if per_tensor:
                radii = {n: match_scale * r for n, r in d_ref.per_tensor.items()}
                extra["radii"] = radii
                return Planned(l2_per_tensor_coefficients(radii, d_ft.per_tensor), extra)
            r = match_scale * d_ref.global_l2
        else:
            r = float(radius)  # type: ignore[arg-type]
        extra["radius"] = r
        return Planned(l2_global_coefficients(r, d_ft.global_l2), extra)

    if not (math.isfinite(match_scale) and match_scale >= 0.0):
        raise UsageError(f"match scale must be a finite number >= 0, got {match_scale}")
    params = {"radius": radius, "per_tensor": per_tensor,
              **({"match_scale": match_scale} if match_scale != 1.0 else {})}
    return run_merge("l2-project", params, [base, finetuned], out, options, plan)


def expand_trajectory(checkpoints: Sequence[PathLike]) -> list[Path]:
    """One folder without weights of its own but with step-N/checkpoint-N subfolders → them."""
    if len(checkpoints) == 1:
        p = Path(checkpoints[0])
        has_weights = p.is_file() or any(p.glob("*.safetensors")) or any(
            p.glob("*.safetensors.index.json"))
        if p.is_dir() and not has_weights:
            return trajectory_folders(p)
    return [Path(c) for c in checkpoints]


def ema(base: PathLike, checkpoints: Sequence[PathLike], out: PathLike, *,
        eta: float | None = None, sigma_rel: float | None = None,
        steps: Sequence[float] | None = None, options: MergeOptions | None = None) -> dict:
    """Offline EMA over θ₁..θ_K (in order, or one trajectory folder), starting from θ̄₀ = θ₀.

    With `eta`: equals the online EMA applied after each saved step: θ̄ₖ = (1−η)θ̄ₖ₋₁ + ηθₖ.
    With `sigma_rel` instead: EDM2's power-function profile evaluated as weights at the saved
    `steps` (default: N of checkpoint-N/step-N names, else 1..K); see `merge.ema_profile`.
    """
    if (eta is None) == (sigma_rel is None):
        raise UsageError("ema needs exactly one of `eta` or `sigma_rel`")
    paths = expand_trajectory(checkpoints)
    if sigma_rel is not None:
        lambdas, params, args = power_ema_plan(sigma_rel, paths, steps)
        planned = Planned(lambdas, formula=POWER_EMA_FORMULA, cli_args=args)
        return run_merge("ema", params, [base, *paths], out, options or MergeOptions(),
                         lambda _: planned)
    if steps is not None:
        raise UsageError("`steps` is used only with `sigma_rel`")
    lambdas = ema_coefficients(eta, len(paths))
    return run_merge("ema", {"eta": eta, "num_checkpoints": len(paths)}, [base, *paths], out,
                     options or MergeOptions(), lambda _: Planned(lambdas))
