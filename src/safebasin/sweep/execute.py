"""Run a sweep: fine-tunes, matched-distance merges and evaluations, each cached on disk.

Layout under the work folder (default `RESULTS/work`):

    world-<key>/, theta0-<key>/    the toy world and θ₀ (toy sources only)
    runs/<key>/                    one fine-tuning run (see `runs`), keyed by its settings
    points/<key>/point.json        one evaluated model: its settings and its row
    points/<key>/model/            the merged weights of a merge point

A key is a hash of everything the result depends on (the source's identity, the run's
fine-tuning settings and seed, the EMA, the merge, the evaluation settings). `point.json` is
written last and atomically, so a point with one is finished and a re-run skips it; an
interrupted sweep picks up where it stopped.

For each EMA model at distance d from θ₀ the sweep builds, from the same run:
`task-arithmetic` θ₀ + (d/‖Δ‖)·Δ (the global L2 projection onto radius d), `l2-per-tensor`
(each tensor's own distance matched to the EMA's), `offline-ema` (the closed-form EMA over the
saved trajectory with the same η, checked against the online one), and `l2-reg`: fine-tuning
with C·‖θ − θ₀‖², C searched so that the run ends near d.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ..baselines.config import FinetuneConfig
from .config import EmaSpec, Experiment, L2Match, SweepConfig
from .runs import (
    RunSpec,
    default_trajectory_every,
    is_finished,
    max_abs_difference,
    train_run,
    trajectory_for,
)
from .source import Evaluator, prepare, settings_key

log = logging.getLogger(__name__)

POINT_FILE = "point.json"
# progress(label): called once per point finished (cached or computed)
Progress = Callable[[str], None]


def _params(ft: FinetuneConfig) -> dict:
    return {"lr": ft.lr, "batch_size": ft.batch_size, "grad_accum": ft.grad_accum,
            "steps": ft.steps, "l2_to_init": ft.l2_to_init, "seed": ft.seed}


class Sweep:
    """One sweep over a config; `run()` returns one row (dict) per point, in config order."""

    def __init__(self, config: SweepConfig, workdir: Path, *, progress: Progress | None = None,
                 show_training: bool = False) -> None:
        self.config, self.workdir = config, workdir
        self.progress, self.show_training = progress, show_training
        self.prepared = prepare(config.source, workdir)
        self._evaluator: Evaluator | None = None  # loads the prompts on first use

    # ---- caching ------------------------------------------------------------------------------
    def _evaluate(self, model_dir: Path) -> dict:
        if self._evaluator is None:
            self._evaluator = Evaluator(self.prepared, self.config.eval)
        return self._evaluator(model_dir)

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
            tmp.write_text(json.dumps({"settings": settings, "row": stored}, indent=2,
                                      sort_keys=True, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, done)
        if self.progress is not None:
            self.progress(f"{row.get('experiment', '')} {row['method']}")
        return {**stored, **row}  # the row's labels (experiment name) follow the config

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
                           lambda _: self._evaluate(self.prepared.base))

    def _finetune_point(self, exp: Experiment, spec: RunSpec, run_dir: Path) -> dict:
        method = "l2-reg" if spec.finetune.l2_to_init > 0 else "finetune"
        row = {"experiment": exp.name, "method": method, **_params(spec.finetune)}
        return self._point({"method": method, "run": spec.settings()}, row,
                           lambda _: self._evaluate(run_dir))

    def _ema_point(self, exp: Experiment, spec: RunSpec, ema: EmaSpec, run_dir: Path) -> dict:
        row = {"experiment": exp.name, "method": "ema", **_params(spec.finetune),
               "eta": ema.eta, "every": ema.every,
               "ema_updates": spec.finetune.steps // ema.every if spec.finetune.steps else None}
        return self._point({"method": "ema", "run": spec.settings(), "ema": asdict(ema)}, row,
                           lambda _: self._evaluate(run_dir / ema.tag))

    def _merge_point(self, exp: Experiment, merge: str, spec: RunSpec, ema: EmaSpec,
                     run_dir: Path, ema_row: dict, ft_row: dict) -> dict:
        from .. import merge as m

        ema_dir = run_dir / ema.tag
        row = {"experiment": exp.name, "method": merge, **_params(spec.finetune),
               "eta": ema.eta, "every": ema.every, "ema_updates": ema_row.get("ema_updates"),
               "matched_to": ema.tag, "target_distance": ema_row["distance"]}
        options = m.MergeOptions(overwrite=True)

        def compute(folder: Path) -> dict:
            out, extra = folder / "model", {}
            if merge == "task-arithmetic":
                scale = ema_row["distance"] / ft_row["distance"]
                m.task_arithmetic(self.prepared.base, [run_dir], out, scales=[scale],
                                  options=options)
                extra["scale"] = scale
            elif merge == "l2-per-tensor":
                m.l2_project(self.prepared.base, run_dir, out, match=ema_dir,
                             per_tensor=True, options=options)
            else:  # offline-ema: the same η over the weights saved at the EMA's update steps
                m.ema(self.prepared.base, trajectory_for(run_dir, ema.every), out,
                      eta=ema.eta, options=options)
                extra["offline_online_max_abs_diff"] = max_abs_difference(out, ema_dir)
            return {**self._evaluate(out), **extra}

        return self._point({"method": merge, "run": spec.settings(), "ema": asdict(ema)}, row,
                           compute)

    # ---- experiments --------------------------------------------------------------------------
    def _run_spec(self, exp: Experiment, ft: FinetuneConfig, seed: int) -> RunSpec:
        traj = exp.trajectory_every
        if traj is None and "offline-ema" in exp.merges:
            traj = default_trajectory_every(exp.ema)
        return RunSpec(replace(ft, seed=seed), exp.ema, traj)

    def experiment(self, exp: Experiment) -> list[dict]:
        rows = []
        for ft in exp.grid(self.config.finetune):
            ema_rows: dict[EmaSpec, list[dict]] = {s: [] for s in exp.ema}
            for seed in exp.seeds:
                spec = self._run_spec(exp, ft, seed)
                run_dir = self._run(spec)
                ft_row = self._finetune_point(exp, spec, run_dir)
                rows.append(ft_row)
                for ema in exp.ema:
                    ema_row = self._ema_point(exp, spec, ema, run_dir)
                    ema_rows[ema].append(ema_row)
                    rows.append(ema_row)
                    rows += [self._merge_point(exp, merge, spec, ema, run_dir, ema_row, ft_row)
                             for merge in exp.merges]
            if exp.l2_reg is not None:
                rows += self._l2_matched(exp, ft, ema_rows)
        return rows

    def _l2_matched(self, exp: Experiment, ft: FinetuneConfig,
                    ema_rows: dict[EmaSpec, list[dict]]) -> list[dict]:
        """For each EMA: C tuned on the first seed to end at the EMA's mean distance, then run
        on every seed."""
        from ..merge import distance

        tried: dict[float, float] = {}  # C -> distance on the tuning seed

        def run_distance(c: float) -> float:
            if c not in tried:
                run_dir = self._run(RunSpec(replace(ft, seed=exp.seeds[0], l2_to_init=c)))
                tried[c] = distance(self.prepared.base, run_dir).global_l2
            return tried[c]

        rows = []
        for ema, group in ema_rows.items():
            target = math.fsum(r["distance"] for r in group) / len(group)
            c = search_coefficient(run_distance, target, exp.l2_reg, tried)
            for seed in exp.seeds:
                spec = RunSpec(replace(ft, seed=seed, l2_to_init=c))
                run_dir = self._run(spec)
                row = self._finetune_point(exp, spec, run_dir)
                rows.append({**row, "eta": ema.eta, "every": ema.every,
                             "ema_updates": group[0].get("ema_updates"), "matched_to": ema.tag,
                             "target_distance": target})
        return rows

    def run(self) -> list[dict]:
        rows = [self.theta0()]
        for exp in self.config.experiments:
            rows += self.experiment(exp)
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


def run_sweep(config: SweepConfig, workdir: str | Path, *, progress: Progress | None = None,
              show_training: bool = False) -> list[dict]:
    """Run (or resume) every point of `config` under `workdir`; one row per point.

    Raises:
        UsageError, DataNotFoundError, CheckpointNotFoundError: bad inputs (see the config).
    """
    return Sweep(config, Path(workdir), progress=progress, show_training=show_training).run()
