"""The four merges as Python functions that mirror the CLI.

Each opens its inputs (headers only), asks a planner for coefficients, and hands the plan to the
one streaming executor. θ₀ (`base`) is always the first input.

Example:
    >>> from safebasin import merge
    >>> merge.lerp("llama-chat", "llama-ft", "llama-wise", alpha=0.5)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
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
from .executor import execute
from .plan import MergeOptions, build_plan

PathLike = str | os.PathLike


def _describe(role: str, ckpt: Checkpoint) -> dict:
    """An input as the recipe records it: its local path plus where it came from (Hub id and
    commit sha, LoRA adapter)."""
    return {"role": role, "path": str(Path(ckpt.path).absolute()), **ckpt.source}


def _run(method: str, parameters: dict, paths: Sequence[PathLike], out: PathLike,
         options: MergeOptions, coefficients_for) -> dict:
    """Open inputs, plan with `coefficients_for(checkpoints)`, execute; always close inputs."""
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(paths[0], allow_pickle=options.allow_pickle))
        others = [stack.enter_context(open_checkpoint(p, allow_pickle=options.allow_pickle,
                                                      base=base)) for p in paths[1:]]
        inputs = [base, *others]
        coefficients, extra = coefficients_for(inputs)
        plans = build_plan(inputs, coefficients, options)
        roles = ["base", *(["finetuned"] * len(others))]
        recipe = {
            "method": method,
            "parameters": {**parameters, **extra},
            "inputs": [_describe(r, c) for r, c in zip(roles, inputs, strict=True)],
            "coefficients": coefficients,
            "options": {"dtype": options.dtype, "shard_size": options.shard_size,
                        "vocab_mismatch": options.vocab_mismatch,
                        "allow_nonfinite": options.allow_nonfinite,
                        "allow_pickle": options.allow_pickle},
        }
        return execute(plans, inputs, out, options=options, recipe=recipe)


def lerp(base: PathLike, finetuned: PathLike, out: PathLike, *, alpha: float,
         options: MergeOptions | None = None) -> dict:
    """θ = θ₀ + α(θ_ft − θ₀) (WiSE-FT). Returns the recipe written to `out`."""
    coeffs = lerp_coefficients(alpha)
    return _run("lerp", {"alpha": alpha}, [base, finetuned], out, options or MergeOptions(),
                lambda _: (coeffs, {}))


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
    coeffs = task_arithmetic_coefficients(scales)
    return _run("task-arithmetic", {"scales": scales}, [base, *finetuned], out,
                options or MergeOptions(), lambda _: (coeffs, {}))


def l2_project(base: PathLike, finetuned: PathLike, out: PathLike, *,
               radius: float | None = None, match: PathLike | None = None,
               per_tensor: bool = False, options: MergeOptions | None = None) -> dict:
    """θ = θ₀ + min(1, r/‖Δ‖)·Δ with Δ = θ_ft − θ₀, globally or per tensor.

    The radius is given (`radius`, global only) or matched to `match`'s distance to θ₀:
    globally r = ‖θ_ref − θ₀‖, or per tensor rₜ = ‖θ_ref,t − θ₀,t‖. Needs one statistics pass
    over θ₀ and θ_ft (and θ_ref) before the merge.
    """
    options = options or MergeOptions()
    if (radius is None) == (match is None):
        raise UsageError("l2-project needs exactly one of --radius R or --match REF")
    if per_tensor and radius is not None:
        raise UsageError("--per-tensor needs --match REF: one radius for every tensor is "
                         "rarely meant; use the global projection with --radius")

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
                extra["radii"] = d_ref.per_tensor
                return l2_per_tensor_coefficients(d_ref.per_tensor, d_ft.per_tensor), extra
            r = d_ref.global_l2
        else:
            r = float(radius)  # type: ignore[arg-type]
        extra["radius"] = r
        return l2_global_coefficients(r, d_ft.global_l2), extra

    params = {"radius": radius, "per_tensor": per_tensor}
    return _run("l2-project", params, [base, finetuned], out, options, plan)


def expand_trajectory(checkpoints: Sequence[PathLike]) -> list[Path]:
    """One folder without weights of its own but with step-N/checkpoint-N subfolders → them."""
    if len(checkpoints) == 1:
        p = Path(checkpoints[0])
        has_weights = p.is_file() or any(p.glob("*.safetensors")) or any(
            p.glob("*.safetensors.index.json"))
        if p.is_dir() and not has_weights:
            return trajectory_folders(p)
    return [Path(c) for c in checkpoints]


def ema(base: PathLike, checkpoints: Sequence[PathLike], out: PathLike, *, eta: float,
        options: MergeOptions | None = None) -> dict:
    """Offline EMA over θ₁..θ_K (in order, or one trajectory folder), starting from θ̄₀ = θ₀.

    Equals the online EMA applied after each saved step: θ̄ₖ = (1−η)θ̄ₖ₋₁ + ηθₖ.
    """
    paths = expand_trajectory(checkpoints)
    coeffs = ema_coefficients(eta, len(paths))
    return _run("ema", {"eta": eta, "num_checkpoints": len(paths)}, [base, *paths], out,
                options or MergeOptions(), lambda _: (coeffs, {}))
