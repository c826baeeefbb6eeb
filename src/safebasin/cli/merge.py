"""`safebasin merge ...` and `safebasin distance`."""

from __future__ import annotations

import json

import click

from ..errors import UsageError
from ._common import (
    ProgressBar,
    _floats,
    _Group,
    cli,
    merge_options,
    quiet_option,
)


@cli.group(cls=_Group)
def merge() -> None:
    """Merge θ₀ (BASE) with fine-tuned checkpoints, streaming shard by shard."""


@merge.command("lerp")
@click.argument("base")
@click.argument("finetuned")
@click.option("--alpha", type=float, required=True, help="θ = θ₀ + α(θ_ft − θ₀), in [0, 1].")
@click.option("--extrapolate", is_flag=True, help="Allow --alpha outside [0, 1].")
@merge_options
def merge_lerp(base, finetuned, alpha, extrapolate, out, options):
    """Linear interpolation (WiSE-FT) between BASE and FINETUNED."""
    from .. import merge as m

    return m.lerp(base, finetuned, out, alpha=alpha, options=options, extrapolate=extrapolate)


@merge.command("task-arithmetic")
@click.argument("base")
@click.argument("finetuned", nargs=-1, required=True)
@click.option("--scale", type=float, help="One λ for every fine-tune.")
@click.option("--scales", help="One λ per fine-tune, comma-separated (negative allowed).")
@click.option("--weights", help="mergekit's form: wᵢ per fine-tune, comma-separated, with "
                                "--lambda and --normalize (its fp32 order, bit for bit).")
@click.option("--lambda", "lambda_", type=float,
              help="With --weights: scale of the weighted task vector (default 1).")
@click.option("--normalize/--no-normalize", default=None,
              help="With --weights: divide by Σ wᵢ (default: no).")
@merge_options
def merge_task_arithmetic(base, finetuned, scale, scales, weights, lambda_, normalize, out,
                          options):
    """θ = θ₀ + Σ λᵢ(θᵢ − θ₀) over one or more fine-tunes, or mergekit's
    θ₀ + λ·Σ wᵢ(θᵢ − θ₀) [÷ Σ wᵢ] with --weights."""
    from .. import merge as m

    if sum(x is not None for x in (scale, scales, weights)) != 1:
        raise UsageError("give exactly one of --scale, --scales or --weights")
    if weights is not None:
        return m.sparse_merge("task-arithmetic", base, list(finetuned), out, density=1.0,
                              weights=_floats(weights),
                              lambda_=1.0 if lambda_ is None else lambda_,
                              normalize=bool(normalize), options=options)
    if lambda_ is not None or normalize is not None:
        raise UsageError("--lambda and --normalize go with --weights (mergekit's form)")
    lams = [scale] if scale is not None else _floats(scales)
    return m.task_arithmetic(base, list(finetuned), out, scales=lams, options=options)


@merge.command("l2-project")
@click.argument("base")
@click.argument("finetuned")
@click.option("--radius", type=float, help="Project onto the L2 ball of this radius.")
@click.option("--match", "match", help="Take the radius from REF's distance to BASE.")
@click.option("--per-tensor", is_flag=True, help="Match each tensor's own distance (--match).")
@merge_options
def merge_l2_project(base, finetuned, radius, match, per_tensor, out, options):
    """θ = θ₀ + min(1, r/‖Δ‖)·Δ: FINETUNED pulled back onto a ball around BASE."""
    from .. import merge as m

    return m.l2_project(base, finetuned, out, radius=radius, match=match,
                        per_tensor=per_tensor, options=options)


@merge.command("ema")
@click.argument("base")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--eta", type=float, help="Weight of each incoming checkpoint.")
@click.option("--sigma-rel", type=float,
              help="Instead of --eta: EDM2's power-function profile of this relative width.")
@click.option("--steps", help="With --sigma-rel: the checkpoints' steps, comma-separated "
              "(default: N of checkpoint-N/step-N names, else 1..K).")
@merge_options
def merge_ema(base, checkpoints, eta, sigma_rel, steps, out, options):
    """Offline EMA over CHECKPOINTS in order (or one trajectory folder of step-N subfolders)."""
    from .. import merge as m

    return m.ema(base, list(checkpoints), out, eta=eta, sigma_rel=sigma_rel,
                 steps=_floats(steps) if steps is not None else None, options=options)


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--per-tensor", is_flag=True, help="Also print each tensor's distance.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin/.pt with weights_only=True.")
@quiet_option
def distance(a, b, per_tensor, as_json, allow_pickle, quiet):
    """L2 distance between checkpoints A and B (streaming, fp32)."""
    from ..merge import distance as dist

    with ProgressBar(quiet=quiet, desc="distance") as bar:
        d = dist(a, b, allow_pickle=allow_pickle, progress=bar)
    if as_json:
        data = d.to_json() if per_tensor else {"global_l2": d.global_l2}
        click.echo(json.dumps(data, indent=2))
        return
    if per_tensor:
        width = max(map(len, d.per_tensor), default=0)
        for name, v in d.per_tensor.items():
            click.echo(f"{name:<{width}}  {v:.6g}")
    click.echo(f"global L2 distance: {d.global_l2:.6g}")
