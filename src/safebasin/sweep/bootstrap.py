"""Paired hierarchical bootstrap of a difference between two arms (numpy only, seeded).

A study measures each arm (say EMA and task arithmetic) on the same prompts, under the same
fine-tuning seeds, in the same worlds, so the per-prompt outcomes pair up: d[w][s][p] =
a[w][s][p] − b[w][s][p]. The estimate is the mean of d, each world weighted equally, each
seed equally within its world. Its 95% interval comes from resampling the three levels the
way the data were drawn:

1. draw W worlds with replacement from the W worlds;
2. within each drawn world, draw its S seeds with replacement, and its P prompts with
   replacement once: every seed of a world answers the same prompts (prompts are crossed with
   seeds, not nested in them), so a prompt that is hard for one seed is drawn for all of them;
3. the resampled estimate is the mean of d over the drawn cells, with the same weights.

The same draw applies to both arms (resampling d is exactly that), which is what makes the
interval paired. Identical arms give d = 0 and a zero-width interval at 0. Two draws of the same
world in one resample get independent inner draws, as a nested bootstrap requires.

    interval = paired_bootstrap(ema, task_arithmetic, n_boot=2000, seed=0)
    interval.low, interval.estimate, interval.high
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

# a[world][seed][prompt]: per-prompt outcomes (0/1 or any number); prompt counts may differ
# between worlds, seed counts too, but both arms must have the same shape
Outcomes = Sequence[Sequence[Sequence[float]]]


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval for a mean difference (arm a − arm b)."""

    estimate: float
    low: float
    high: float
    n_boot: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def _differences(a: Outcomes, b: Outcomes) -> list[np.ndarray]:
    """One (S, P) float64 array of a − b per world, after checking that the arms pair up."""
    if len(a) != len(b) or not a:
        raise UsageError(f"paired bootstrap: the arms have {len(a)} and {len(b)} worlds; "
                         "they must have the same, at least one")
    out = []
    for w, (aw, bw) in enumerate(zip(a, b, strict=True)):
        xa, xb = np.asarray(aw, dtype=np.float64), np.asarray(bw, dtype=np.float64)
        if xa.ndim != 2 or xa.shape != xb.shape or 0 in xa.shape:
            raise UsageError(f"paired bootstrap: world {w} has outcomes of shape {xa.shape} "
                             f"and {xb.shape}; both arms need the same (seeds, prompts), "
                             "non-empty")
        out.append(xa - xb)
    return out


def _world_draws(d: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` independent inner resamples of one world: its mean over drawn seeds × prompts."""
    seeds, prompts = d.shape
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=n)  # (n, S)
    prompt_counts = rng.multinomial(prompts, np.full(prompts, 1.0 / prompts), size=n)  # (n, P)
    return np.einsum("ns,sp,np->n", seed_counts, d, prompt_counts) / (seeds * prompts)


def paired_bootstrap(a: Outcomes, b: Outcomes, *, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Interval:
    """The mean of a − b over worlds, seeds and prompts, with a paired hierarchical bootstrap
    percentile interval (see the module docstring for the resampling scheme).

    Args:
        a, b: per-prompt outcomes, indexed [world][seed][prompt]; the same shape.
        n_boot: resamples (2000 gives the 2.5% and 97.5% percentiles to about ±0.5 point).
        seed: numpy generator seed: the same inputs and seed give the same interval.
        level: the interval's coverage, in (0, 1).

    Raises:
        UsageError: the arms do not pair up, or n_boot / level out of range.
    """
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise UsageError(f"paired bootstrap: n_boot must be >= 1 and level in (0, 1), got "
                         f"{n_boot} and {level}")
    diffs = _differences(a, b)
    estimate = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    worlds = len(diffs)
    # every world's inner resamples for every (resample, slot): slot j of resample i uses
    # world picks[i, j] with that world's inner draw number (i, j)
    inner = np.stack([_world_draws(d, rng, n_boot * worlds).reshape(n_boot, worlds)
                      for d in diffs])  # (W, n_boot, W)
    picks = rng.integers(0, worlds, size=(n_boot, worlds))
    rows, slots = np.indices(picks.shape)
    means = inner[picks, rows, slots].mean(axis=1)  # (n_boot,)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(estimate=estimate, low=float(low), high=float(high), n_boot=n_boot,
                    level=level)


__all__ = ["Interval", "Outcomes", "paired_bootstrap"]
