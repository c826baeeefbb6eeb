"""A sweep's work as jobs for an executor (Ray, SLURM): the grid as a graph with dependencies.

`execute.Sweep` stays the one place that knows points, keys, rows and caching. This module only
cuts its work into jobs that can run on other machines, each calling the same `Sweep` methods,
so every point is computed by the same code and cached under the same key as in process:

    jobs/prepare-<key>   a cell's toy world and θ₀ (a `model:` source: nothing to build)
    jobs/theta0-<key>    θ₀'s point, after its cell is prepared
    jobs/run-<key>       one fine-tuning run (with its EMAs and trajectory), after the same
    jobs/evals-<key>     that run's points: the fine-tune, its EMAs and their merges, after
                         the run and θ₀'s point (merges read the run's folders and rows)

Independent jobs (runs of different learning rates, seeds, cells) run at once. Two experiments
that share a run share its `run` job, and their `evals` jobs run one after the other (they
share points). After the jobs, `run_sweep` walks the config in process as before: every point is
then cached, and what cannot be planned ahead, the searches of the L2-to-init coefficient (each
run chosen from the last one's distance), runs in the driver.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..executors import Executor, Point, PointContext, ProgressCallback, run_points
from .config import ModelSource, SweepConfig, ToyCell
from .execute import Sweep, run_spec
from .source import settings_key

GROUP = "jobs"


def _worker_sweep(ctx: PointContext, config: SweepConfig, cell: ToyCell | None) -> Sweep:
    """The cell's `Sweep` in a worker; pinned like the driver when reproducible mode is on."""
    from .. import reproducible

    if reproducible.env_is_pinned():
        reproducible.configure_torch()
    return Sweep(config, ctx.workdir, cell=cell)


def prepare_job(ctx: PointContext, config: SweepConfig, cell: ToyCell | None) -> dict:
    return {"base": str(_worker_sweep(ctx, config, cell).prepared.base)}


def theta0_job(ctx: PointContext, config: SweepConfig, cell: ToyCell | None) -> dict:
    return {"point": _worker_sweep(ctx, config, cell).theta0()["point"]}


def run_job(ctx: PointContext, config: SweepConfig, cell: ToyCell | None, exp_index: int,
            ft, seed: int) -> dict:
    sweep = _worker_sweep(ctx, config, cell)
    spec = run_spec(config.experiments[exp_index], ft, seed)
    return {"run": sweep._run(spec).name}


def evals_job(ctx: PointContext, config: SweepConfig, cell: ToyCell | None, exp_index: int,
              ft, seed: int) -> dict:
    sweep = _worker_sweep(ctx, config, cell)
    exp = config.experiments[exp_index]
    spec = run_spec(exp, ft, seed)
    rows, _ = sweep.run_rows(exp, spec, sweep._run(spec), sweep.theta0())
    return {"points": [r["point"] for r in rows]}


def _cells(config: SweepConfig) -> list[ToyCell | None]:
    return [None] if isinstance(config.source, ModelSource) else list(config.source.cells())


class _Plan:
    """The jobs planned so far, by key; a job asked for twice (a run two experiments share)
    is one job."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.jobs: dict[str, Point] = {}

    def add(self, cell: ToyCell | None, kind: str, fn, settings: dict, args: tuple = (),
            deps: tuple[str, ...] = (), label: str = "") -> str:
        where = asdict(cell) if cell is not None else asdict(self.config.source)
        key = f"{kind}-{settings_key({'cell': where, **settings})}"
        self.jobs.setdefault(key, Point(key, fn, (self.config, cell, *args), deps=deps,
                                        label=label or kind, group=GROUP))
        return key


def plan_jobs(config: SweepConfig) -> list[Point]:
    """The jobs of `config`'s grid, dependencies first (see the module docstring)."""
    plan, evals = _Plan(config), {"eval": asdict(config.eval)}
    for cell in _cells(config):
        prepared = plan.add(cell, "prepare", prepare_job, {})
        theta0 = plan.add(cell, "theta0", theta0_job, evals, deps=(prepared,))
        last_evals: dict[str, str] = {}  # run job -> the last evals job on it
        for i, exp in enumerate(config.experiments):
            for ft in exp.grid(config.finetune):
                for seed in exp.seeds:
                    run_settings = {"run": run_spec(exp, ft, seed).settings()}
                    label = f"{exp.name} lr={ft.lr:g} seed={seed}"
                    run = plan.add(cell, "run", run_job, run_settings, (i, ft, seed),
                                   (prepared,), f"fine-tune {label}")
                    deps = (run, theta0, *([last_evals[run]] if run in last_evals else []))
                    last_evals[run] = plan.add(
                        cell, "evals", evals_job,
                        {**run_settings, "experiment": asdict(exp), **evals}, (i, ft, seed),
                        deps, f"evaluate {label}")
    return list(plan.jobs.values())


def run_jobs(config: SweepConfig, workdir: Path, executor: Executor, *,
             progress: ProgressCallback | None = None) -> None:
    """Run the grid's jobs on `executor`; finished jobs and points are reused."""
    run_points(plan_jobs(config), workdir=workdir, executor=executor, progress=progress)


__all__ = ["plan_jobs", "run_jobs"]
