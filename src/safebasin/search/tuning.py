"""`tune`: the merge that keeps the most of a fine-tune while its keyword ASR stays under a limit.

Each evaluated coefficient is a cached point (see `points`): merged into the cache, scored by
the same evaluator as `safebasin eval asr`, its model deleted unless it is the best passing
one so far (at most two models on disk at once). The search itself is `bisection.search`.

OUT is then the chosen merge as `safebasin merge` writes it, with the point's results under
`OUT/eval/` (`asr`, and `utility` with utility data), its model card re-rendered with them, and
`frontier.csv` / `frontier.png` (every evaluated coefficient), so `safebasin push OUT` accepts it
as it is. OUT is assembled in a temporary folder and renamed into place last.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..errors import LimitUnreachableError, OutputExistsError, UsageError
from .bisection import CONFIDENCE, Search, meets, search
from .methods import Method, get_method
from .points import EVAL_DIR, EvalSpec, Evaluator, Job, PointResult, PointRunner, start_search

log = logging.getLogger(__name__)

FRONTIER_CSV = "frontier.csv"
FRONTIER_PNG = "frontier.png"


@dataclass(frozen=True)
class FrontierPoint:
    """One evaluated coefficient: t is the fraction of the fine-tune, `coefficient` the
    method's own (α, λ, or a radius); rates are fractions; `seconds` is 0 when cached."""

    fraction: float
    coefficient: float
    asr: float
    asr_low: float
    asr_high: float
    n: int | None
    degenerate_rate: float | None
    utility: float | None
    distance: float | None
    meets_limit: bool
    chosen: bool
    cached: bool
    seconds: float
    point: str


@dataclass(frozen=True)
class TuneResult:
    """The frontier (sorted by t), the chosen point, whether ASR was monotone in t (and where
    it fell), the files written, and the cost: wall time against the time spent merging and
    evaluating the points computed in this run."""

    method: str
    parameter: str
    max_asr: float
    confidence: str
    rows: list[FrontierPoint]
    chosen: FrontierPoint
    decreasing: list[tuple[float, float]]
    out: Path
    files: dict[str, Path]
    wall_s: float
    eval_s: float
    evaluations: int

    @property
    def monotone(self) -> bool:
        return not self.decreasing

    @property
    def overhead(self) -> float | None:
        """wall / (sum of evaluations) − 1; None when every point came from the cache."""
        return self.wall_s / self.eval_s - 1.0 if self.eval_s > 0 else None


def _check(max_asr: float, tolerance: float, confidence: str) -> None:
    if not (math.isfinite(max_asr) and 0.0 <= max_asr < 1.0):
        raise UsageError(f"`max_asr` {max_asr}: give a fraction in [0, 1), e.g. 0.1 for 10%")
    if not (math.isfinite(tolerance) and 0.0 < tolerance < 1.0):
        raise UsageError(f"`tolerance` {tolerance}: give a fraction of the fine-tune in (0, 1)")
    if confidence not in CONFIDENCE:
        raise UsageError(f"`confidence` {confidence!r}: choose point or upper")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _unreachable(s: Search, method: Method, full: float, max_asr: float,
                 confidence: str) -> LimitUnreachableError:
    theta0 = s.measured[0.0]
    bound = f" (Wilson upper bound {_pct(theta0['asr_high'])})" if confidence == "upper" else ""
    if s.best is None:
        return LimitUnreachableError(
            f"θ₀ itself has keyword ASR {_pct(theta0['asr'])}{bound}, above `max_asr` "
            f"{_pct(max_asr)}: no merge towards the fine-tune can meet it")
    t = min(t for t in s.measured if t > 0)
    return LimitUnreachableError(
        f"no {method.parameter} above 0 keeps keyword ASR ≤ {_pct(max_asr)}: θ₀ has "
        f"{_pct(theta0['asr'])}{bound}, the smallest tried ({method.parameter}={t * full:.6g}) "
        f"{_pct(s.measured[t]['asr'])}; loosen `max_asr` or lower `tolerance`")


def _rows(s: Search, results: dict[float, PointResult], full: float, max_asr: float,
          confidence: str) -> list[FrontierPoint]:
    rows = []
    for t in sorted(s.measured):
        r, m = results[t], s.measured[t]
        rows.append(FrontierPoint(
            fraction=t, coefficient=t * full, asr=m["asr"], asr_low=m["asr_low"],
            asr_high=m["asr_high"], n=m.get("n"), degenerate_rate=m.get("degenerate_rate"),
            utility=m.get("utility"), distance=m.get("distance"),
            meets_limit=meets(m, max_asr, confidence), chosen=t == s.best, cached=r.cached,
            seconds=round(r.seconds, 3), point=r.key))
    return rows


# how this run obtained a row (from the cache, in how many seconds), not what it measured: kept
# out of the CSVs so that the same search gives the same bytes on every run and machine
_RUN_FIELDS = ("cached", "seconds")


def write_rows_csv(rows: list, path: Path, *, prefix: dict | None = None) -> Path:
    """Dataclass rows as CSV, without the run's timings (written to a temp file, renamed into
    place)."""
    prefix = prefix or {}
    names = [*prefix, *(f.name for f in fields(rows[0]) if f.name not in _RUN_FIELDS)] \
        if rows else list(prefix)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=names, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**prefix, **{k: ("" if v is None else v) for k, v in
                                     asdict(r).items() if k not in _RUN_FIELDS}})
    os.replace(tmp, path)
    return path


def _point_summaries_at(eval_dir: Path, out: Path) -> None:
    """Results copied from the cache name the cached model's path; name OUT instead (the
    weights are byte-identical: the summaries' content hash is what the push gate checks)."""
    from ..summary import EvalSummary

    for path in eval_dir.glob("*/summary.json"):
        try:
            summary = EvalSummary.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ValueError:  # left as it is: the card's reader refuses it, naming the file
            continue
        if summary.model_path is not None:
            data = replace(summary, model_path=str(out)).to_dict()
            tmp = path.with_name(".summary.json.tmp")
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
            os.replace(tmp, path)


def _assemble(out: Path, chosen: PointResult, build: Callable[[Path], dict], rows, *,
              overwrite: bool, inputs: list[Path], plot: Callable[[Path], None],
              prefix: dict) -> dict[str, Path]:
    """OUT: the chosen point's model (moved from the cache when this run made it, copied when a
    landscape kept it, merged again otherwise: merges are byte-reproducible), its eval/
    results, the frontier CSV and plot, the card."""
    from ..checkpoint import publishing
    from ..publish import write_card

    ours = not chosen.cached
    if not any(chosen.model.glob("*.safetensors")):
        build(chosen.model)
        ours = True
    with publishing(out, overwrite=overwrite, inputs=inputs) as tmp:
        for f in sorted(chosen.model.iterdir()):
            (shutil.move if ours else shutil.copy2)(str(f), tmp / f.name)
        if (chosen.folder / EVAL_DIR).is_dir():  # an injected evaluator may write nothing
            shutil.copytree(chosen.folder / EVAL_DIR, tmp / EVAL_DIR)
            _point_summaries_at(tmp / EVAL_DIR, out)
        write_rows_csv(rows, tmp / FRONTIER_CSV, prefix=prefix)
        plot(tmp / FRONTIER_PNG)
        write_card(tmp)
    if ours:
        shutil.rmtree(chosen.model, ignore_errors=True)
    return {"out": out, FRONTIER_CSV: out / FRONTIER_CSV, FRONTIER_PNG: out / FRONTIER_PNG}


class _Models:
    """Keeps on disk only the model of the best passing point computed in this run."""

    def __init__(self, store: PointRunner) -> None:
        self.store, self.kept, self.kept_t = store, None, -1.0

    def settle(self, t: float, r: PointResult, passed: bool) -> None:
        if r.cached:
            return  # not ours to delete (a landscape may have kept it)
        if passed and t > self.kept_t:
            if self.kept is not None:
                self.store.drop_model(self.kept)
            self.kept, self.kept_t = r.key, t
        else:
            self.store.drop_model(r.key)

    def drop_all(self) -> None:
        if self.kept is not None:
            self.store.drop_model(self.kept)


def tune(base: str | os.PathLike, finetuned: str | os.PathLike, out: str | os.PathLike, *,
         max_asr: float, method: str = "lerp", method_args: dict | None = None,
         tolerance: float = 0.02, confidence: str = "point",
         evaluation: EvalSpec | None = None,
         evaluator: Evaluator | None = None, cache: str | os.PathLike | None = None,
         overwrite: bool = False, merge_options=None, executor=None,
         on_point: Callable[[float, dict, bool], None] | None = None) -> TuneResult:
    """Find the largest coefficient whose merge keeps keyword ASR ≤ `max_asr`; write it to OUT.

    Args:
        base, finetuned: θ₀ and the fine-tune (folders or Hub ids).
        out: the output folder (refused if it exists, unless `overwrite`).
        max_asr: the limit, a fraction in [0, 1).
        method: lerp, task-arithmetic, l2-project, slerp, ties, dare-linear, dare-ties,
            breadcrumbs, breadcrumbs-ties (see `methods`).
        method_args: the method's other parameters (TIES' `density`, DARE's `seed`, ...).
        tolerance: the width, as a fraction of the fine-tune, at which bisection stops.
        confidence: "point" (ASR ≤ limit) or "upper" (the Wilson 95% upper bound ≤ limit).
        evaluation: the evaluator's settings (prompts, keywords, decoding, utility data).
        evaluator: replaces the keyword evaluator (tests, other metrics); see `points.Evaluator`.
        cache: the point cache folder (default: `points.default_cache_dir()`).
        merge_options: `merge.MergeOptions` for every merge (dtype, device, ...).
        executor: a `safebasin.executors` executor for the points (default: in process); the
            search is sequential, so each point is one run.
        on_point: called as on_point(t, metrics, cached) after each point.

    Returns:
        The frontier, the chosen point and the cost (`TuneResult`).

    Raises:
        UsageError: a limit outside [0, 1), a bad tolerance, confidence or method.
        LimitUnreachableError: θ₀ is above the limit, or no coefficient above 0 meets it.
        OutputExistsError: OUT exists and not `overwrite`.

    Example:
        >>> tune("llama-chat", "llama-ft", "llama-safe", max_asr=0.05)   # doctest: +SKIP
    """
    from ..merge import distance

    start = time.perf_counter()
    _check(max_asr, tolerance, confidence)
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists; pass `overwrite` to replace it")
    m = get_method(method, method_args)
    ctx = start_search(base, finetuned, evaluation=evaluation, evaluator=evaluator,
                       merge_options=merge_options, cache=cache, executor=executor)
    store, options = ctx.runner, ctx.options
    common = {**ctx.common, "inputs": ctx.inputs}
    full = distance(base, finetuned).global_l2 if m.by_distance else 1.0
    models = _Models(store)
    results: dict[float, PointResult] = {}

    def build_at(t: float) -> Callable[[Path], dict]:
        return functools.partial(m.build, base=base, ft=finetuned, c=t * full, options=options)

    def measure(t: float) -> dict:
        settings = {**common, "method": m.name, m.parameter: t * full,
                    **({"method_args": dict(m.args)} if m.args else {})}
        job = Job(settings, build_at(t), f"{m.name} {m.parameter}={t * full:.6g}")
        r = results[t] = store.run([job], keep_models=True)[0]
        models.settle(t, r, meets(r.metrics, max_asr, confidence))
        if on_point is not None:
            on_point(t, r.metrics, r.cached)
        return r.metrics

    try:
        s = search(measure, max_asr=max_asr, tolerance=tolerance, confidence=confidence)
        if not s.best:  # None: θ₀ fails; 0.0: only θ₀ passes
            raise _unreachable(s, m, full, max_asr, confidence)
    except BaseException:
        models.drop_all()
        raise
    rows = _rows(s, results, full, max_asr, confidence)
    if s.decreasing:
        log.warning("ASR is not monotone in %s: it falls between %s", m.parameter,
                    ", ".join(f"t={a:g} and t={b:g}" for a, b in s.decreasing))
    chosen = next(r for r in rows if r.chosen)

    def plot(path: Path) -> None:
        from .plots import plot_frontier

        plot_frontier(rows, path, max_asr=max_asr, parameter=m.parameter,
                      confidence=confidence)

    local = [Path(p) for p in (base, finetuned) if Path(p).exists()]
    files = _assemble(out, results[s.best], build_at(s.best), rows, overwrite=overwrite,
                      inputs=local, plot=plot, prefix={"method": m.name,
                                                       "parameter": m.parameter})
    computed = [r for r in results.values() if not r.cached]
    return TuneResult(m.name, m.parameter, max_asr, confidence, rows, chosen, s.decreasing,
                      out, files, time.perf_counter() - start,
                      sum(r.seconds for r in computed), len(computed))


def frontier_table(result: TuneResult) -> str:
    """The frontier as a fixed-width table (what the CLI prints)."""
    head = (f"{'t':>8} {result.parameter:>10} {'ASR':>8} {'95% CI':>17} {'degen':>7} "
            f"{'utility':>9} {'distance':>10}  ")
    lines = [head]
    for r in result.rows:
        util = f"{r.utility:.4g}" if r.utility is not None else "-"
        dist = f"{r.distance:.4g}" if r.distance is not None else "-"
        degen = _pct(r.degenerate_rate) if r.degenerate_rate is not None else "-"
        mark = "chosen" if r.chosen else ("ok" if r.meets_limit else "over")
        lines.append(f"{r.fraction:>8.5g} {r.coefficient:>10.5g} {_pct(r.asr):>8} "
                     f"{_pct(r.asr_low) + '-' + _pct(r.asr_high):>17} {degen:>7} {util:>9} "
                     f"{dist:>10}  {mark}{' (cached)' if r.cached else ''}")
    return "\n".join(lines)


__all__ = ["FRONTIER_CSV", "FRONTIER_PNG", "FrontierPoint", "TuneResult", "frontier_table",
           "tune"]
