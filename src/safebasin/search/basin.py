"""`landscape`: keyword ASR around θ₀, along the fine-tune and across a second direction.

The safety basin of Peng et al. 2024 ("Navigating the Safety Landscape"), drawn with the
evaluator every other command uses:

    1D   θ(α)    = θ₀ + α(θ_ft − θ₀)                 `merge.lerp`, α < 0 and α > 1 included
    2D   θ(α, β) = θ₀ + α(θ_ft − θ₀) + β·d            `merge.task_arithmetic` with scales (α, β)

where d is another fine-tune's step (θ_ft2 − θ₀) or a random direction normalised tensor by
tensor to the fine-tune's step (see `direction`). Every grid point is one cached point (see
`points`): the 1D points are exactly the lerp points `tune --method lerp` evaluates, so the two
share results. A point's weights live only while it is evaluated unless `keep_models`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .methods import _extrapolating, get_method
from .points import (
    EvalSpec,
    Evaluator,
    Job,
    PointResult,
    PointRunner,
    input_identity,
    settings_key,
    start_search,
)
from .tuning import write_rows_csv

LANDSCAPE_CSV = "landscape.csv"
LANDSCAPE_PNG = "landscape.png"
LANDSCAPE_JSON = "landscape.json"
DEFAULT_ALPHAS = "-0.5:1.5:21"
DEFAULT_BETAS = "-1:1:11"
_DIRECTIONS = "directions"


@dataclass(frozen=True)
class GridPoint:
    """One evaluated grid point (beta None in 1D); rates are fractions; `model` is the kept
    weights' folder, or None when they were deleted."""

    alpha: float
    beta: float | None
    asr: float
    asr_low: float
    asr_high: float
    n: int | None
    degenerate_rate: float | None
    utility: float | None
    distance: float | None
    cached: bool
    seconds: float
    point: str
    model: str | None


@dataclass(frozen=True)
class LandscapeResult:
    """The grid (α-major), the files written, wall time and the time spent on new points."""

    rows: list[GridPoint]
    files: dict[str, Path]
    wall_s: float
    eval_s: float
    evaluations: int


def parse_range(text: str) -> list[float]:
    """`start:stop:count` (inclusive, evenly spaced) or a comma-separated list of numbers.

    Values are rounded to 12 significant digits, so 0.5 is 0.5 and not 0.49999999999999994:
    grid points then share cache entries with the dyadic points of `tune`.

    Raises:
        UsageError: anything else, a count below 1, or a value that is not finite.
    """
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            a, b, n = float(start), float(stop), int(count)
            if n < 1:
                raise ValueError
            values = [a] if n == 1 else [a + i * (b - a) / (n - 1) for i in range(n)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{text!r} is not START:STOP:COUNT (e.g. -0.5:1.5:21) or a "
                         "comma-separated list of numbers") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{text!r}: give at least one finite number")
    return sorted({float(f"{v:.12g}") for v in values})


def _two_directions(out, base, finetuned, direction, alpha: float, beta: float,
                    options) -> dict:
    """θ₀ + α(θ_ft − θ₀) + β(θ_d − θ₀): task arithmetic over the two directions (module level,
    so a point can carry it to a Ray or SLURM worker)."""
    from .. import merge as m

    return m.task_arithmetic(base, [finetuned, direction], out, scales=[alpha, beta],
                             options=options,
                             **_extrapolating(m.task_arithmetic, alpha, beta))


def _second_direction(base, finetuned, other, seed: int | None, store: PointRunner,
                      identity: list[str]) -> tuple[Path | None, object]:
    """The folder of the second direction's end point and its identity for the point keys."""
    if other is not None:
        return Path(other), input_identity(other)
    if seed is None:
        return None, None
    from .direction import write_random_direction

    key = settings_key({"random_direction": "per-tensor-delta-norm", "seed": seed,
                        "inputs": identity})
    folder = store.root / _DIRECTIONS / key
    if not any(folder.glob("*.safetensors")):
        write_random_direction(base, finetuned, folder, seed=seed)
    return folder, {"random_seed": seed, "normalised_to": "finetune-step-per-tensor"}


def _row(alpha: float, beta: float | None, r: PointResult, kept: bool) -> GridPoint:
    m = r.metrics
    return GridPoint(alpha, beta, m["asr"], m["asr_low"], m["asr_high"], m.get("n"),
                     m.get("degenerate_rate"), m.get("utility"), m.get("distance"), r.cached,
                     round(r.seconds, 3), r.key,
                     str(r.model) if kept and r.model.is_dir() else None)


def landscape(base: str | os.PathLike, finetuned: str | os.PathLike,
              out_dir: str | os.PathLike, *, alphas: Sequence[float] | str = DEFAULT_ALPHAS,
              betas: Sequence[float] | str | None = None, other: str | os.PathLike | None = None,
              random_seed: int | None = None, evaluation: EvalSpec | None = None,
              evaluator: Evaluator | None = None, cache: str | os.PathLike | None = None,
              keep_models: bool = False, merge_options=None, executor=None,
              progress: Callable | None = None) -> LandscapeResult:
    """Evaluate the 1D line (no second direction) or the 2D grid; write CSV, plot and record.

    Args:
        base, finetuned: θ₀ and the fine-tune.
        out_dir: where `landscape.csv`, `landscape.png` and `landscape.json` go.
        alphas, betas: grid values, lists or `start:stop:count` strings (betas: 2D only,
            default -1:1:11).
        other: a second fine-tune: d = θ_ft2 − θ₀.
        random_seed: a random direction instead (see `direction`), seeded by this.
        evaluation, evaluator, cache, merge_options: as for `tune`.
        keep_models: keep each point's weights in the cache (the CSV's `model` column).
        executor: a `safebasin.executors` executor: the grid's points run in parallel on Ray
            or SLURM (default: one at a time in this process).
        progress: the executors' progress callback (`executors.RunProgress`).

    Returns:
        The grid rows (`LandscapeResult`).

    Raises:
        UsageError: both or neither-but-betas of `other`/`random_seed`, a bad range.

    Example:
        >>> landscape("llama-chat", "llama-ft", "basin", random_seed=0)   # doctest: +SKIP
    """
    start = time.perf_counter()
    if other is not None and random_seed is not None:
        raise UsageError("give `other` or `random_seed`, not both")
    two_d = other is not None or random_seed is not None
    if betas is not None and not two_d:
        raise UsageError("`betas` needs a second direction: `other` or `random_seed`")
    alphas = parse_range(alphas) if isinstance(alphas, str) else [float(a) for a in alphas]
    betas = betas if betas is not None else DEFAULT_BETAS
    betas = parse_range(betas) if isinstance(betas, str) else [float(b) for b in betas]
    ctx = start_search(base, finetuned, evaluation=evaluation, evaluator=evaluator,
                       merge_options=merge_options, cache=cache, executor=executor,
                       progress=progress)
    store, options, common, inputs = ctx.runner, ctx.options, ctx.common, ctx.inputs
    direction, direction_id = _second_direction(base, finetuned, other, random_seed, store,
                                                inputs)
    lerp = get_method("lerp")

    def job(alpha: float, beta: float | None) -> Job:
        if beta is None:  # the very settings `tune --method lerp` uses: one shared point
            return Job({**common, "inputs": inputs, "method": "lerp", "alpha": alpha},
                       functools.partial(lerp.build, base=base, ft=finetuned, c=alpha,
                                         options=options), f"alpha={alpha:g}")
        return Job({**common, "inputs": [*inputs, direction_id], "method": "task-arithmetic",
                    "scales": [alpha, beta]},
                   functools.partial(_two_directions, base=base, finetuned=finetuned,
                                     direction=direction, alpha=alpha, beta=beta,
                                     options=options), f"alpha={alpha:g} beta={beta:g}")

    grid = [(a, b) for a in alphas for b in (betas if two_d else [None])]
    results = store.run([job(a, b) for a, b in grid], keep_models=keep_models)
    rows = [_row(a, b, r, keep_models) for (a, b), r in zip(grid, results, strict=True)]
    files = _write(Path(out_dir), rows, two_d=two_d, other=other, seed=random_seed,
                   record={"base": str(base), "finetuned": str(finetuned),
                           "other": str(other) if other is not None else None,
                           "random_seed": random_seed, "alphas": alphas,
                           "betas": betas if two_d else None, "cache": str(store.root)})
    computed = [r for r in rows if not r.cached]
    return LandscapeResult(rows, files, time.perf_counter() - start,
                           sum(r.seconds for r in computed), len(computed))


def _write(out_dir: Path, rows: list[GridPoint], *, two_d: bool, other, seed,
           record: dict) -> dict[str, Path]:
    from .plots import plot_landscape_1d, plot_landscape_2d

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_rows_csv(rows, out_dir / LANDSCAPE_CSV)
    png = out_dir / LANDSCAPE_PNG
    tmp_png = out_dir / f".{LANDSCAPE_PNG}.tmp.png"
    if two_d:
        second = "fine-tune 2" if other is not None else f"random direction (seed {seed})"
        marks = [(0.0, 0.0, "θ₀"), (1.0, 0.0, "fine-tune")]
        if other is not None:
            marks.append((0.0, 1.0, "fine-tune 2"))
        plot_landscape_2d(rows, tmp_png, title="safety landscape: keyword ASR",
                          beta_label=f"β  ({second})", marks=marks)
    else:
        plot_landscape_1d(rows, tmp_png, title="safety landscape: θ₀ → fine-tune and beyond")
    os.replace(tmp_png, png)
    record_path = out_dir / LANDSCAPE_JSON
    tmp = out_dir / f".{LANDSCAPE_JSON}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, record_path)
    return {LANDSCAPE_CSV: csv_path, LANDSCAPE_PNG: png, LANDSCAPE_JSON: record_path}


__all__ = ["DEFAULT_ALPHAS", "DEFAULT_BETAS", "GridPoint", "LANDSCAPE_CSV", "LANDSCAPE_JSON",
           "LANDSCAPE_PNG", "LandscapeResult", "landscape", "parse_range"]
