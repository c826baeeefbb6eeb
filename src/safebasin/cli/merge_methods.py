"""`safebasin merge` methods beyond the linear four.

TIES, DARE, breadcrumbs, SLERP, model stock, and running a mergekit YAML. Models are one
variadic argument (θ₀ first) so that too few models is one clear line (exit 2), not click's
usage block; the library checks the count.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from ..errors import UsageError
from ._common import _floats, merge_options
from .merge import merge

_MODELS = "BASE FT..."


def _list(text: str | None) -> list[float] | None:
    return None if text is None else _floats(text)


def _split(models: tuple[str, ...]) -> tuple[str, list[str]]:
    if not models:
        raise UsageError("give BASE and the fine-tuned models")
    return models[0], list(models[1:])


def _sparse_options(*, normalize: bool, gamma: bool = False, seed: bool = False) -> Callable:
    """The options of mergekit's generalized task arithmetic methods (its names, defaults)."""
    def wrap(f: Callable) -> Callable:
        opts = [
            click.argument("models", nargs=-1, metavar=_MODELS),
            click.option("--density", required=True,
                         help="Fraction of each task vector kept, in (0, 1]: one value or one "
                              "per fine-tune (comma-separated)."),
            click.option("--weights", help="wᵢ per fine-tune, comma-separated (default 1 each)."),
            click.option("--lambda", "lambda_", type=float, default=1.0, show_default=True,
                         help="Scale of the merged task vector."),
            click.option("--normalize/--no-normalize", default=normalize, show_default=True,
                         help="Divide by the summed weights (of agreeing signs, with TIES)."),
        ]
        if gamma:
            opts.append(click.option("--gamma", default="0.01", show_default=True,
                                     help="Fraction of the largest magnitudes dropped, >= 0 "
                                          "(one value or one per fine-tune)."))
        if seed:
            opts += [click.option("--seed", type=int, required=True,
                                  help="Seed of the drop mask (a hash of seed, tensor name and "
                                       "element index)."),
                     click.option("--rescale", type=click.Choice(["density", "l1", "none"]),
                                  default="density", show_default=True,
                                  help="Rescale what is kept: ÷ density (the paper), l1 "
                                       "(mergekit's rescale: true, one more pass), none.")]
        for opt in reversed(opts):
            f = opt(f)
        return merge_options(f)
    return wrap


def _sparse(method: str, models, density, weights, lambda_, normalize, out, options, **kw):
    from .. import merge as m

    base, finetuned = _split(models)
    if "gamma" in kw:
        kw["gamma"] = _list(kw["gamma"])
    return m.sparse_merge(method, base, finetuned, out, density=_list(density),
                          weights=_list(weights), lambda_=lambda_, normalize=normalize,
                          options=options, **kw)


@merge.command("ties")
@_sparse_options(normalize=True)
def merge_ties(models, density, weights, lambda_, normalize, out, options):
    """TIES: top-k magnitudes per tensor, sign election, disjoint mean (arXiv 2306.01708)."""
    return _sparse("ties", models, density, weights, lambda_, normalize, out, options)


@merge.command("dare-linear")
@_sparse_options(normalize=False, seed=True)
def merge_dare_linear(models, density, weights, lambda_, normalize, seed, rescale, out,
                      options):
    """DARE: random drop, rescale by 1/density, weighted sum (arXiv 2311.03099)."""
    return _sparse("dare-linear", models, density, weights, lambda_, normalize, out, options,
                   seed=seed, rescale=rescale)


@merge.command("dare-ties")
@_sparse_options(normalize=False, seed=True)
def merge_dare_ties(models, density, weights, lambda_, normalize, seed, rescale, out, options):
    """DARE's drop and rescale, then TIES' sign election."""
    return _sparse("dare-ties", models, density, weights, lambda_, normalize, out, options,
                   seed=seed, rescale=rescale)


@merge.command("breadcrumbs")
@_sparse_options(normalize=False, gamma=True)
def merge_breadcrumbs(models, density, weights, lambda_, normalize, gamma, out, options):
    """Model breadcrumbs: drop the largest and smallest magnitudes (arXiv 2312.06795)."""
    return _sparse("breadcrumbs", models, density, weights, lambda_, normalize, out, options,
                   gamma=gamma)


@merge.command("breadcrumbs-ties")
@_sparse_options(normalize=False, gamma=True)
def merge_breadcrumbs_ties(models, density, weights, lambda_, normalize, gamma, out, options):
    """Breadcrumbs' band, then TIES' sign election."""
    return _sparse("breadcrumbs-ties", models, density, weights, lambda_, normalize, out,
                   options, gamma=gamma)


@merge.command("slerp")
@click.argument("models", nargs=-1, metavar="BASE OTHER")
@click.option("--t", "t", type=float, required=True, help="0 gives BASE, 1 gives OTHER.")
@merge_options
def merge_slerp(models, t, out, options):
    """Spherical interpolation per tensor (lerp where nearly parallel, as mergekit)."""
    from .. import merge as m

    if len(models) != 2:
        raise UsageError(f"slerp needs exactly two models, BASE OTHER; got {len(models)}")
    return m.slerp(models[0], models[1], out, t=t, options=options)


@merge.command("model-stock")
@click.argument("models", nargs=-1, metavar="BASE FT1 FT2 [FT...]")
@merge_options
def merge_model_stock(models, out, options):
    """Model stock: interpolate θ₀ toward the fine-tunes' mean by their angle
    (arXiv 2403.19522)."""
    from .. import merge as m

    base, finetuned = _split(models)
    return m.model_stock(base, finetuned, out, options=options)


@merge.command("from-mergekit")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="DARE's seed (mergekit's --random-seed).")
@merge_options
def merge_from_mergekit(config, seed, out, options):
    """Run a mergekit YAML whose method and options safebasin honours exactly (else exit 2,
    naming the key)."""
    from .. import merge as m

    return m.from_mergekit(config, out, seed=seed, options=options)
