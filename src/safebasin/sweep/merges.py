"""The models a sweep builds from one fine-tuning run and one of its EMAs.

Each builder writes one HF model folder to `out` and returns the numbers the row records (the
knob it used). Everything is a call to `safebasin.merge`; the formulas are in `decompose` and
in the docstring of `execute`. The matched-utility searches live here too: each try is a merge
into a scratch folder and a task-accuracy evaluation, deleted after.

    MergeContext(base, run_dir, ema_dir, ema, steps, trajectory_every)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import EmaSpec, UtilityMatch
from .decompose import anchor_weight, path_average_from_ema_scale, path_average_scales
from .matching import Match, match_utility
from .runs import trajectory_for


@dataclass(frozen=True)
class MergeContext:
    """θ₀, the run and one EMA of it: what every merge of that EMA starts from."""

    base: Path  # θ₀
    run_dir: Path  # the run: final weights, EMA folders, trajectory
    ema: EmaSpec
    steps: int  # optimizer steps of the run
    trajectory_every: int | None  # interval of the saved raw weights (None: none saved)

    @property
    def ema_dir(self) -> Path:
        return self.run_dir / self.ema.tag

    @property
    def updates(self) -> int:
        return self.steps // self.ema.every

    @property
    def c0(self) -> float:
        """The EMA's weight on θ₀, (1 − η)^K."""
        return anchor_weight(self.ema.eta, self.updates)

    @property
    def has_trajectory(self) -> bool:
        """Whether the raw weights were saved at every one of the EMA's updates."""
        return self.trajectory_every is not None and self.ema.every % self.trajectory_every == 0


def _options():
    from ..merge import MergeOptions

    return MergeOptions(overwrite=True)


def task_arithmetic(ctx: MergeContext, out: Path, scale: float) -> dict:
    """θ₀ + λ(θ_final − θ₀): the straight line to the final weights (global L2 projection)."""
    from .. import merge

    merge.task_arithmetic(ctx.base, [ctx.run_dir], out, scales=[scale], options=_options())
    return {"scale": scale}


def l2_per_tensor(ctx: MergeContext, out: Path, radius_scale: float = 1.0) -> dict:
    """Each tensor projected onto ρ times the EMA's own distance for that tensor."""
    from .. import merge

    merge.l2_project(ctx.base, ctx.run_dir, out, match=ctx.ema_dir, per_tensor=True,
                     match_scale=radius_scale, options=_options())
    return {"radius_scale": radius_scale}


def offline_ema(ctx: MergeContext, out: Path) -> dict:
    """The closed-form EMA over the saved trajectory, with the online EMA's η."""
    from .. import merge
    from .runs import max_abs_difference

    merge.ema(ctx.base, trajectory_for(ctx.run_dir, ctx.ema.every), out, eta=ctx.ema.eta,
              options=_options())
    return {"offline_online_max_abs_diff": max_abs_difference(out, ctx.ema_dir)}


def path_average(ctx: MergeContext, out: Path) -> dict:
    """θ̃ = Σₖ cₖθₖ/(1 − c₀): from the trajectory when it holds every update, else from the
    online EMA by θ̃ = θ₀ + (θ̄ − θ₀)/(1 − c₀) (the same model, up to rounding)."""
    from .. import merge

    if ctx.has_trajectory:
        folders = trajectory_for(ctx.run_dir, ctx.ema.every)
        scales = path_average_scales(ctx.ema.eta, len(folders))
        merge.task_arithmetic(ctx.base, folders, out, scales=scales, options=_options())
        return {"c0": ctx.c0, "built_from": "trajectory"}
    scale = path_average_from_ema_scale(ctx.ema.eta, ctx.updates)
    merge.task_arithmetic(ctx.base, [ctx.ema_dir], out, scales=[scale], options=_options())
    return {"c0": ctx.c0, "scale": scale, "built_from": "ema"}


def anchor_lerp(ctx: MergeContext, out: Path) -> dict:
    """lerp(θ₀, θ_final; 1 − c₀): the EMA's anchor weight on the straight line."""
    from .. import merge

    merge.lerp(ctx.base, ctx.run_dir, out, alpha=1.0 - ctx.c0, options=_options())
    return {"c0": ctx.c0, "scale": 1.0 - ctx.c0}


def path_average_lerp(ctx: MergeContext, out: Path, path_dir: Path, target: float) -> dict:
    """lerp(θ₀, θ̃) at the EMA's distance `target` (it equals the EMA: the split's check)."""
    from .. import merge
    from .runs import max_abs_difference

    scale = target / merge.distance_to_base(ctx.base, path_dir)
    merge.lerp(ctx.base, path_dir, out, alpha=scale, options=_options())
    return {"c0": ctx.c0, "scale": scale,
            "ema_max_abs_diff": max_abs_difference(out, ctx.ema_dir)}


def search_merge(build: Callable[[Path, float], dict], utility: Callable[[Path], float],
                 scratch: Path, target: float, spec: UtilityMatch, *, low: float, high: float,
                 known: dict[float, float], start: float) -> Match:
    """The knob of `build(out, knob)` whose model's utility is nearest `target` (bisection;
    each try merges into `scratch` and is deleted after)."""
    def evaluate(knob: float) -> float:
        try:
            build(scratch, knob)
            return utility(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return match_utility(evaluate, target, low=low, high=high, tolerance=spec.tolerance,
                         max_tries=spec.max_tries, start=start, known=known)


def radius_scale_bracket(base: Path, run_dir: Path, ema_dir: Path) -> float:
    """The ρ above which the per-tensor projection changes nothing (every tensor inside its
    radius: the final weights): max over tensors of ‖Δₜ‖ / rₜ."""
    from ..merge import distance

    d_ft = distance(base, run_dir).per_tensor
    d_ema = distance(base, ema_dir).per_tensor
    ratios = [d_ft[n] / r for n, r in d_ema.items() if r > 0.0 and n in d_ft]
    return max(ratios, default=1.0)


__all__ = ["MergeContext", "task_arithmetic", "l2_per_tensor", "offline_ema", "path_average",
           "anchor_lerp", "path_average_lerp", "search_merge", "radius_scale_bracket"]
