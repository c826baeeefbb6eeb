"""Run a sweep: fine-tunes, matched merges and evaluations, each cached on disk.

Layout under the work folder (default `RESULTS/work`):

    world-<key>/, theta0-<key>/    the toy worlds and θ₀s, one per (model size, world seed)
    runs/<key>/                    one fine-tuning run (see `runs`), keyed by its settings
    points/<key>/point.json        one evaluated model: its settings, its row, its provenance
    points/<key>/outcomes.json     its per-prompt outcomes (for the paired bootstrap)
    points/<key>/model/            the merged weights of a merge point

A key is a hash of everything the result depends on (the source's identity, the run's
fine-tuning settings and seed, the EMA, the merge, the evaluation settings). `point.json` is
written last and atomically, so a point with one is finished and a re-run skips it; an
interrupted sweep picks up where it stopped. A toy source with several world seeds and model
sizes is a grid of independent cells, each with its own world and θ₀; `workers` > 1 runs cells
in that many processes (each single-threaded, so the bytes do not depend on it).

For each EMA model θ̄ (anchor weight c₀ = (1−η)^K) at distance d from θ₀ the sweep builds,
from the same run (see `merges` and `decompose`):

- matched distance: `task-arithmetic` θ₀ + (d/‖Δ‖)·Δ (the global L2 projection onto radius d),
  `l2-per-tensor` (each tensor's own distance matched to the EMA's), `l2-reg` (fine-tuning
  with C·‖θ − θ₀‖², C searched so that the run ends near d);
- matched utility (`match_utility`): the same three with λ, the radius factor ρ and C searched
  so that task accuracy is within a tolerance of the EMA's;
- the split θ̄ = c₀θ₀ + (1 − c₀)θ̃: `path-average` θ̃, `anchor-lerp` lerp(θ₀, θ_final; 1 − c₀),
  `path-average-lerp` lerp(θ₀, θ̃) at d (equal to θ̄: a check);
- `offline-ema`: the closed-form EMA over the saved trajectory, checked against the online one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ..baselines.config import FinetuneConfig
from ..executors import Executor, LocalExecutor, ProgressCallback
from .config import EmaSpec, Experiment, L2Match, ModelSource, SweepConfig, ToyCell
from .matching import match_utility
from .rows import Row
from .runs import RunSpec, default_trajectory_every, is_finished, train_run
from .source import Evaluator, Prepared, prepare, settings_key

log = logging.getLogger(__name__)

POINT_FILE = "point.json"
OUTCOMES_FILE = "outcomes.json"
# progress(label): called once per point finished (cached or computed)
Progress = Callable[[str], None]
# the L2-to-init strength is searched as log10 C in this bracket for a utility match
_LOG_C_BRACKET = (-6.0, 1.0)


def _params(ft: FinetuneConfig) -> dict:
    return {"lr": ft.lr, "batch_size": ft.batch_size, "grad_accum": ft.grad_accum,
            "steps": ft.steps, "l2_to_init": ft.l2_to_init, "seed": ft.seed}


_PROVENANCE: dict | None = None


def _provenance() -> dict:
    """The process's provenance (CPU, kernels, threads, versions, git), collected once."""
    global _PROVENANCE
    if _PROVENANCE is None:
        from .. import provenance

        _PROVENANCE = provenance.collect()
    return _PROVENANCE


def run_spec(exp: Experiment, ft: FinetuneConfig, seed: int) -> RunSpec:
    """The run that grid point `ft` of `exp` trains with `seed` (its settings name its folder)."""
    traj = exp.trajectory_every
    if traj is None and "offline-ema" in exp.merges:
        traj = default_trajectory_every(exp.ema)
    return RunSpec(replace(ft, seed=seed), exp.ema, traj)


class Sweep:
    """The points of one cell (a toy (model, world) or a `model:` source); `run()` returns one
    row (dict) per point, in config order."""

    def __init__(self, config: SweepConfig, workdir: Path, *, cell: ToyCell | None = None,
                 progress: Progress | None = None, show_training: bool = False) -> None:
        self.config, self.workdir = config, workdir
        self.progress, self.show_training = progress, show_training
        source = config.source if isinstance(config.source, ModelSource) else \
            cell or config.source.cells()[0]
        self.prepared: Prepared = prepare(source, workdir)
        self._evaluator: Evaluator | None = None  # loads the prompts on first use

    # ---- caching ------------------------------------------------------------------------------
    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = Evaluator(self.prepared, self.config.eval)
        return self._evaluator

    def _evaluate(self, model_dir: Path, folder: Path) -> dict:
        """A model's row fields; its per-prompt outcomes go to `folder/outcomes.json`."""
        row, outcomes = self.evaluator.evaluate(model_dir)
        (folder / OUTCOMES_FILE).write_text(json.dumps(outcomes, separators=(",", ":")) + "\n",
                                            encoding="utf-8")
        return row

    def _point(self, settings: dict, row: dict, compute: Callable[[Path], dict]) -> dict:
        """The cached row of the point with `settings`, computing it if it is not finished."""
        settings = {**settings, "source": self.prepared.identity,
                    "eval": asdict(self.config.eval)}
        key = settings_key(settings)
        folder = self.workdir / "points" / key
        done = folder / POINT_FILE
        if done.is_file():
            stored = json.loads(done.read_text(encoding="utf-8"))["row"]
        else:
            folder.mkdir(parents=True, exist_ok=True)
            stored = {**row, **compute(folder), "point": key}
            tmp = folder / f".{POINT_FILE}.tmp"
            tmp.write_text(json.dumps({"settings": settings, "row": stored,
                                       "provenance": _provenance()}, indent=2,
                                      sort_keys=True, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, done)
        if self.progress is not None:
            self.progress(f"{row.get('experiment', '')} {row['method']}")
        # the row's labels (experiment name, model, world) follow the config; the point's
        # fields become a `Row` here, so a field with no column fails at once
        return Row.from_dict({**stored, **row, **self.prepared.labels}).to_dict()

    def _run(self, spec: RunSpec) -> Path:
        key = settings_key({**spec.settings(), "source": self.prepared.identity})
        run_dir = self.workdir / "runs" / key
        if not is_finished(run_dir):
            log.info("fine-tuning %s", run_dir)
            train_run(self.prepared.base, self.prepared.data, run_dir, spec,
                      show_progress=self.show_training)
            (run_dir / "run.json").write_text(json.dumps(spec.settings(), indent=2) + "\n",
                                              encoding="utf-8")
        return run_dir

    # ---- points -------------------------------------------------------------------------------
    def theta0(self) -> dict:
        row = {"experiment": "theta0", "method": "theta0"}
        return self._point({"method": "theta0"}, row,
                           lambda folder: self._evaluate(self.prepared.base, folder))

    def _finetune_point(self, exp: Experiment, spec: RunSpec, run_dir: Path) -> dict:
        method = "l2-reg" if spec.finetune.l2_to_init > 0 else "finetune"
        row = {"experiment": exp.name, "method": method, **_params(spec.finetune)}
        return self._point({"method": method, "run": spec.settings()}, row,
                           lambda folder: self._evaluate(run_dir, folder))

    def _ema_point(self, exp: Experiment, spec: RunSpec, ema: EmaSpec, run_dir: Path) -> dict:
        from .decompose import anchor_weight

        updates = spec.finetune.steps // ema.every if spec.finetune.steps else None
        row = {"experiment": exp.name, "method": "ema", **_params(spec.finetune),
               "eta": ema.eta, "every": ema.every, "ema_updates": updates,
               "c0": anchor_weight(ema.eta, updates) if updates else None}
        return self._point({"method": "ema", "run": spec.settings(), "ema": asdict(ema)}, row,
                           lambda folder: self._evaluate(run_dir / ema.tag, folder))

    def _merge_points(self, exp: Experiment, spec: RunSpec, ema: EmaSpec, run_dir: Path,
                      ema_row: dict, ft_row: dict, theta0_row: dict) -> list[dict]:
        """Every merge of `exp.merges` built from one EMA, then the matched-utility ones."""
        from . import merges as mg

        ctx = mg.MergeContext(self.prepared.base, run_dir, ema, spec.finetune.steps,
                              spec.trajectory_every)
        d = ema_row["distance"]
        label = {"experiment": exp.name, **_params(spec.finetune), "eta": ema.eta,
                 "every": ema.every, "ema_updates": ema_row.get("ema_updates"),
                 "matched_to": ema.tag}
        base_settings = {"run": spec.settings(), "ema": asdict(ema)}

        def point(method: str, match: str | None, build: Callable[[Path], dict],
                  **extra) -> dict:
            row = {**label, "method": method, "match": match, "target_distance": d, **extra}

            def compute(folder: Path) -> dict:
                built = build(folder / "model")
                return {**self._evaluate(folder / "model", folder), **built}

            settings = {**base_settings, "method": method, "match": match}
            if match == "utility":
                settings["match_utility"] = asdict(exp.match_utility)
            return self._point(settings, row, compute)

        rows: dict[str, dict] = {}
        for merge in exp.merges:
            if merge == "task-arithmetic":
                rows[merge] = point(merge, "distance", lambda out: mg.task_arithmetic(
                    ctx, out, d / ft_row["distance"]))
            elif merge == "l2-per-tensor":
                rows[merge] = point(merge, "distance", lambda out: mg.l2_per_tensor(ctx, out))
            elif merge == "offline-ema":
                if ctx.has_trajectory:
                    rows[merge] = point(merge, None, lambda out: mg.offline_ema(ctx, out))
            elif merge == "path-average":
                rows[merge] = point(merge, None, lambda out: mg.path_average(ctx, out))
            elif merge == "anchor-lerp":
                rows[merge] = point(merge, None, lambda out: mg.anchor_lerp(ctx, out))
        if "path-average-lerp" in exp.merges:
            path_dir = self._path_average_dir(exp, spec, ema, ctx, label, base_settings)
            rows["path-average-lerp"] = point(
                "path-average-lerp", "distance",
                lambda out: mg.path_average_lerp(ctx, out, path_dir, d))
        out = list(rows.values())
        if exp.match_utility is not None:
            out += self._utility_matched(exp, ctx, ema_row, ft_row, theta0_row, rows, point)
        return out

    def _path_average_dir(self, exp, spec, ema, ctx, label, base_settings) -> Path:
        """θ̃'s weights (the path-average point's model folder, built if needed)."""
        from . import merges as mg

        settings = {**base_settings, "method": "path-average", "match": None}
        row = self._point(settings, {**label, "method": "path-average", "match": None},
                          lambda folder: {**mg.path_average(ctx, folder / "model"),
                                          **self._evaluate(folder / "model", folder)})
        return self.workdir / "points" / row["point"] / "model"

    def _utility_matched(self, exp, ctx, ema_row, ft_row, theta0_row, rows, point) -> list[dict]:
        """Task arithmetic (λ) and per-tensor L2 (ρ) searched to the EMA's task accuracy."""
        from . import merges as mg

        spec, target = exp.match_utility, ema_row["utility"]
        out = []
        searches = []
        if "task-arithmetic" in rows:
            ta = rows["task-arithmetic"]
            searches.append(("task-arithmetic", mg.task_arithmetic, 0.0, 1.0,
                             {0.0: theta0_row["utility"], 1.0: ft_row["utility"],
                              ta["scale"]: ta["utility"]}, ta["scale"]))
        if "l2-per-tensor" in rows:
            high = mg.radius_scale_bracket(ctx.base, ctx.run_dir, ctx.ema_dir)
            searches.append(("l2-per-tensor", mg.l2_per_tensor, 0.0, high,
                             {0.0: theta0_row["utility"], high: ft_row["utility"],
                              1.0: rows["l2-per-tensor"]["utility"]}, 1.0))
        for method, build, low, high, known, start in searches:
            def searched(model_dir: Path, build=build, low=low, high=high, known=known,
                         start=start) -> dict:
                found = mg.search_merge(lambda out, x: build(ctx, out, x),
                                        self.evaluator.utility, model_dir.parent / "try",
                                        target, spec, low=low, high=high, known=dict(known),
                                        start=start)
                return {**build(ctx, model_dir, found.value), "tries": found.tries,
                        "matched": found.matched}

            row = point(method, "utility", searched, target_utility=target)
            out.append({**row, "utility_gap": row["utility"] - target})
        return out

    # ---- experiments --------------------------------------------------------------------------
    def _run_spec(self, exp: Experiment, ft: FinetuneConfig, seed: int) -> RunSpec:
        return run_spec(exp, ft, seed)

    def run_rows(self, exp: Experiment, spec: RunSpec, run_dir: Path,
                 theta0_row: dict) -> tuple[list[dict], dict[EmaSpec, dict]]:
        """The points built from one run: its fine-tune, each EMA and that EMA's merges;
        also the EMA rows by spec (the L2 matching targets them)."""
        ft_row = self._finetune_point(exp, spec, run_dir)
        rows, ema_rows = [ft_row], {}
        for ema in exp.ema:
            ema_rows[ema] = ema_row = self._ema_point(exp, spec, ema, run_dir)
            rows.append(ema_row)
            rows += self._merge_points(exp, spec, ema, run_dir, ema_row, ft_row, theta0_row)
        return rows, ema_rows

    def experiment(self, exp: Experiment, theta0_row: dict) -> list[dict]:
        rows = []
        for ft in exp.grid(self.config.finetune):
            ema_rows: dict[EmaSpec, list[dict]] = {s: [] for s in exp.ema}
            for seed in exp.seeds:
                spec = self._run_spec(exp, ft, seed)
                run_rows, by_ema = self.run_rows(exp, spec, self._run(spec), theta0_row)
                rows += run_rows
                for ema, ema_row in by_ema.items():
                    ema_rows[ema].append(ema_row)
            models = exp.l2_reg.models if exp.l2_reg is not None else None
            if exp.l2_reg is not None and (models is None
                                           or self.prepared.labels.get("model") in models):
                rows += self._l2_matched(exp, ft, ema_rows)
        return rows

    def _l2_matched(self, exp: Experiment, ft: FinetuneConfig,
                    ema_rows: dict[EmaSpec, list[dict]]) -> list[dict]:
        """For each targeted EMA: C tuned on the first seed to end at the EMA's mean distance
        (and, with `match_utility`, at its mean task accuracy), then run on every seed."""
        from ..merge import distance

        tried: dict[float, float] = {}  # C -> distance on the tuning seed
        utilities: dict[float, float] = {}  # log10 C -> utility on the tuning seed

        def tuning_run(c: float) -> Path:
            return self._run(RunSpec(replace(ft, seed=exp.seeds[0], l2_to_init=c)))

        def run_distance(c: float) -> float:
            if c not in tried:
                tried[c] = distance(self.prepared.base, tuning_run(c)).global_l2
            return tried[c]

        def run_utility(x: float) -> float:
            return self.evaluator.utility(tuning_run(float(f"{10.0 ** x:.4g}")))

        targets = exp.l2_reg.targets or tuple(ema_rows)
        rows = []
        for ema in targets:
            group = ema_rows[ema]
            d_target = math.fsum(r["distance"] for r in group) / len(group)
            c = search_coefficient(run_distance, d_target, exp.l2_reg, tried)
            label = {"eta": ema.eta, "every": ema.every, "matched_to": ema.tag,
                     "ema_updates": group[0].get("ema_updates")}
            rows += self._l2_rows(exp, ft, c, {**label, "match": "distance",
                                               "target_distance": d_target})
            if exp.match_utility is None:
                continue
            u_target = math.fsum(r["utility"] for r in group) / len(group)
            x0 = round(math.log10(c), 4)
            utilities.setdefault(x0, self.evaluator.utility(tuning_run(c)))
            before = len(utilities)
            found = match_utility(run_utility, u_target, low=_LOG_C_BRACKET[0],
                                  high=_LOG_C_BRACKET[1], tolerance=exp.match_utility.tolerance,
                                  max_tries=exp.match_utility.max_tries, increasing=False,
                                  start=x0, known=utilities)
            c_u = c if found.value == x0 else float(f"{10.0 ** found.value:.4g}")
            rows += [{**r, "utility_gap": r["utility"] - u_target}
                     for r in self._l2_rows(exp, ft, c_u, {
                         **label, "match": "utility", "target_utility": u_target,
                         "tries": len(utilities) - before, "matched": found.matched})]
        return rows

    def _l2_rows(self, exp: Experiment, ft: FinetuneConfig, c: float, label: dict) -> list[dict]:
        rows = []
        for seed in exp.seeds:
            spec = RunSpec(replace(ft, seed=seed, l2_to_init=c))
            rows.append({**self._finetune_point(exp, spec, self._run(spec)), **label})
        return rows

    def run(self) -> list[dict]:
        theta0 = self.theta0()
        rows = [theta0]
        for exp in self.config.experiments:
            rows += self.experiment(exp, theta0)
        return rows


def _next_coefficient(tried: dict[float, float], target: float, initial: float) -> float:
    """The next C to try. Distance falls as C grows: interpolate log d against log C between
    the runs that bracket the target; with every run on one side, extrapolate the log-log
    slope of the two runs nearest the target (one run: assume d ∝ 1/C), moving by a factor
    of 2 to 1000."""
    if not tried:
        return initial
    above = sorted((c, d) for c, d in tried.items() if d > target)  # C too small
    below = sorted((c, d) for c, d in tried.items() if d < target)  # C too large
    if above and below:
        (c0, d0), (c1, d1) = above[-1], below[0]
        t = (math.log(target) - math.log(d0)) / (math.log(d1) - math.log(d0))
        return math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0)))
    side = above or below
    near = sorted(side, key=lambda cd: abs(math.log(cd[1] / target)))[:2]
    (c1, d1) = near[0]
    slope = -1.0
    if len(near) == 2 and near[1][0] != c1 and near[1][1] != d1:
        (c0, d0) = near[1]
        slope = (math.log(d1) - math.log(d0)) / (math.log(c1) - math.log(c0))
    step = (math.log(target) - math.log(d1)) / slope if slope < 0 else math.inf
    up = bool(above)  # need a larger C
    step = min(max(abs(step), math.log(2.0)), math.log(1000.0))
    return c1 * math.exp(step if up else -step)


def search_coefficient(run_distance: Callable[[float], float], target: float, spec: L2Match,
                       tried: dict[float, float]) -> float:
    """The L2-to-init C whose run ends closest to `target` (relative), searching at most
    `spec.max_tries` new runs; `tried` (C -> distance) is shared between targets."""
    def error(c: float) -> float:
        return abs(math.log(tried[c] / target))

    for _ in range(spec.max_tries):
        if tried and min(error(c) for c in tried) <= math.log1p(spec.tolerance):
            break
        c = float(f"{_next_coefficient(tried, target, spec.initial):.4g}")
        if c in tried:
            break
        run_distance(c)
    if not tried:
        run_distance(spec.initial)
    return min(tried, key=error)


def _run_cell(config: SweepConfig, workdir: Path, cell: ToyCell | None,
              show_training: bool) -> list[dict]:
    """One cell's rows (the function a worker process runs)."""
    return Sweep(config, workdir, cell=cell, show_training=show_training).run()


def _quiet_exit() -> None:
    # torch imports Triton when it is installed, and nanobind prints ~35 lines of "leaked
    # instances" while Triton's modules are torn down; the pool has collected this worker's
    # results by now (multiprocessing flushed its queues before interpreter exit), so skip
    # the teardown, as the CLI does for the main process
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _init_worker() -> None:
    """A worker process inherits the pinned environment; add the in-process half, silence the
    per-model progress bars (the parent shows one per cell), and exit quietly."""
    import atexit

    from transformers.utils import logging as hf_logging

    from .. import reproducible

    if reproducible.env_is_pinned():
        reproducible.configure_torch()
    else:
        import torch

        torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    atexit.register(_quiet_exit)


def _run_parallel(config: SweepConfig, workdir: Path, cells: list[ToyCell], workers: int,
                  progress: Progress | None, show_training: bool) -> list[list[dict]]:
    """Cells in `workers` processes (spawned: torch starts fresh, under the inherited pins),
    the largest models first so that the long cells do not start last."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(range(len(cells)), key=lambda i: (-cells[i].theta0.model.hidden_size
                                                     * cells[i].theta0.model.num_layers, i))
    results: dict[int, list[dict]] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(
            "spawn"), initializer=_init_worker) as pool:
        futures = {pool.submit(_run_cell, config, workdir, cells[i], show_training): i
                   for i in order}
        for future in as_completed(futures):
            rows = future.result()
            results[futures[future]] = rows
            for row in rows if progress is not None else ():
                progress(f"{row.get('experiment', '')} {row['method']}")
    return [results[i] for i in range(len(cells))]


def run_sweep(config: SweepConfig, workdir: str | Path, *, progress: Progress | None = None,
              show_training: bool = False, executor: Executor | None = None,
              jobs_progress: ProgressCallback | None = None) -> list[dict]:
    """Run (or resume) every point of `config` under `workdir`; one row per point, cells
    (model size, then world seed) in config order.

    With an `executor` other than the local one, the grid's fine-tunes and evaluations first
    run as jobs on it (`distributed`; `jobs_progress` follows them); the walk over the config
    that follows finds them cached and computes only the L2-to-init searches.

    Raises:
        UsageError, DataNotFoundError, CheckpointNotFoundError: bad inputs (see the config).
        MissingExtraError, PointsFailedError: the executor's engine is missing; jobs failed.
    """
    workdir = Path(workdir)
    if executor is not None and not isinstance(executor, LocalExecutor):
        from .distributed import run_jobs

        run_jobs(config, workdir, executor, progress=jobs_progress)
    cells = [None] if isinstance(config.source, ModelSource) else config.source.cells()
    workers = min(config.workers, len(cells))
    if workers > 1:
        parts = _run_parallel(config, workdir, cells, workers, progress, show_training)
    else:
        parts = [Sweep(config, workdir, cell=cell, progress=progress,
                       show_training=show_training).run() for cell in cells]
    return [row for part in parts for row in part]
