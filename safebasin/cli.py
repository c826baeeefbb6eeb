"""The `safebasin` command line: parses, calls one library function, prints.

`SafebasinError` becomes one line on stderr and exit code 2 (1 for a failed verification);
anything else keeps its traceback and exit code 1, because it is a bug.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click

from . import __version__
from .errors import SafebasinError, UsageError


class _Group(click.Group):
    """A click group whose commands turn `SafebasinError` into one stderr line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SafebasinError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="safebasin")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """Merge, train with EMA, and evaluate fine-tuned models near their aligned weights θ₀."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def quiet_option(f: Callable) -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


class ProgressBar:
    """A tqdm byte counter on stderr, created on the first update so that an early error
    stays a single line. Call it as `bar(advance, total)`; the library reports that way."""

    def __init__(self, *, quiet: bool, desc: str, unit: str = "B") -> None:
        self._quiet, self._desc, self._unit = quiet, desc, unit
        self._bar = None

    def __call__(self, advance: int, total: int | None = None) -> None:
        if self._quiet:
            return
        if self._bar is None:
            from tqdm import tqdm

            byte = self._unit == "B"
            self._bar = tqdm(total=total, unit=self._unit, unit_scale=byte,
                             unit_divisor=1024 if byte else 1000, desc=self._desc,
                             file=sys.stderr, leave=False)
        self._bar.update(advance)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_bar(total: int | None = None, *, quiet: bool, desc: str) -> ProgressBar:
    """Deprecated shape kept for callers: `total` is now given with each update."""
    return ProgressBar(quiet=quiet, desc=desc)


# ---- merge and distance (safebasin.merge, safebasin.eval.distance) ------------------------


def _size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count, as transformers' max_shard_size reads it."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a size like 5GB or 500MB") from None


def merge_options(f: Callable) -> Callable:
    """Options every merge shares; they arrive in the command as `options` (MergeOptions)."""
    opts = [
        click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
                     help="Output model folder (created atomically)."),
        click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
                     default="auto", show_default=True, help="Output dtype (auto: θ₀'s)."),
        click.option("--shard-size", default="5GB", show_default=True, callback=lambda c, p, v:
                     _size(v), help="Largest output shard."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                     show_default=True, help="Where the arithmetic runs."),
        click.option("--overwrite", is_flag=True, help="Replace OUT (atomically, at the end)."),
        click.option("--allow-pickle", is_flag=True,
                     help="Read .bin/.pt inputs with torch.load(weights_only=True)."),
        click.option("--allow-nonfinite", is_flag=True, help="Merge tensors holding NaN/Inf."),
        click.option("--vocab-mismatch", type=click.Choice(["error", "base"]), default="error",
                     show_default=True, help="base: rows θ₀ has and an input lacks come from θ₀."),
        quiet_option,
    ]
    for opt in reversed(opts):
        f = opt(f)

    @functools.wraps(f)
    def wrapper(*args, out, dtype, shard_size, device, overwrite, allow_pickle,
                allow_nonfinite, vocab_mismatch, quiet, **kwargs):
        from .merge import MergeOptions

        with ProgressBar(quiet=quiet, desc="merge") as bar:
            options = MergeOptions(dtype=dtype, shard_size=shard_size, device=device,
                                   overwrite=overwrite, allow_pickle=allow_pickle,
                                   allow_nonfinite=allow_nonfinite,
                                   vocab_mismatch=vocab_mismatch, progress=bar)
            recipe = f(*args, out=out, options=options, **kwargs)
        d = recipe["distances"]["global_to_base"]
        click.echo(f"wrote {out} ({recipe['method']}, distance to base {d:.6g})")

    return wrapper


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


@cli.group(cls=_Group)
def merge() -> None:
    """Merge θ₀ (BASE) with fine-tuned checkpoints, streaming shard by shard."""


@merge.command("lerp")
@click.argument("base")
@click.argument("finetuned")
@click.option("--alpha", type=float, required=True, help="θ = θ₀ + α(θ_ft − θ₀).")
@merge_options
def merge_lerp(base, finetuned, alpha, out, options):
    """Linear interpolation (WiSE-FT) between BASE and FINETUNED."""
    from . import merge as m

    return m.lerp(base, finetuned, out, alpha=alpha, options=options)


@merge.command("task-arithmetic")
@click.argument("base")
@click.argument("finetuned", nargs=-1, required=True)
@click.option("--scale", type=float, help="One λ for every fine-tune.")
@click.option("--scales", help="One λ per fine-tune, comma-separated (negative allowed).")
@merge_options
def merge_task_arithmetic(base, finetuned, scale, scales, out, options):
    """θ = θ₀ + Σ λᵢ(θᵢ − θ₀) over one or more fine-tunes."""
    from . import merge as m

    if (scale is None) == (scales is None):
        raise UsageError("give exactly one of --scale or --scales")
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
    from . import merge as m

    return m.l2_project(base, finetuned, out, radius=radius, match=match,
                        per_tensor=per_tensor, options=options)


@merge.command("ema")
@click.argument("base")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--eta", type=float, required=True, help="Weight of each incoming checkpoint.")
@merge_options
def merge_ema(base, checkpoints, eta, out, options):
    """Offline EMA over CHECKPOINTS in order (or one trajectory folder of step-N subfolders)."""
    from . import merge as m

    return m.ema(base, list(checkpoints), out, eta=eta, options=options)


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--per-tensor", is_flag=True, help="Also print each tensor's distance.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin/.pt with weights_only=True.")
@quiet_option
def distance(a, b, per_tensor, as_json, allow_pickle, quiet):
    """L2 distance between checkpoints A and B (streaming, fp32)."""
    from .merge import distance as dist

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

# ---- online EMA / fine-tuning (safebasin.ema, safebasin.baselines) -------------------------

# ---- evaluation (safebasin.eval) ------------------------------------------------------------

# ---- toy world, sweep, demo (safebasin.toy) -------------------------------------------------

# ---- hub: card and push (safebasin.hub) -----------------------------------------------------

# ---- verify (safebasin.checkpoint) ----------------------------------------------------------


def main() -> None:
    cli(prog_name="safebasin")


if __name__ == "__main__":
    main()
