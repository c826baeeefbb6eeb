"""What commands that run points share: `--executor` and its options, and a progress bar.

    @executor_options
    def sweep_cmd(..., **engine):
        executor = executor_from_options(engine)
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from ..executors import EXECUTORS, ExecutorOptions, RunProgress

_OPTIONS = [
    click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                 help="Where points run: in this process, as Ray tasks, or as SLURM jobs "
                      "(submitit). Finished points are reused by all three."),
    click.option("--ray-address", help="Ray cluster to join [default: the local one, or start "
                                       "one] (--executor ray)."),
    click.option("--cpus-per-job", type=click.FloatRange(min=0, min_open=True),
                 help="CPUs per point [default: 1] (ray, slurm)."),
    click.option("--gpus-per-job", type=click.FloatRange(min=0),
                 help="GPUs per point [default: 0; Ray takes fractions] (ray, slurm)."),
    click.option("--max-parallel", type=click.IntRange(min=1),
                 help="Most points at once [default: all ready ones] (ray, slurm: the job "
                      "array's %N)."),
    click.option("--slurm-partition", help="SLURM partition [default: the cluster's]."),
    click.option("--slurm-time", help="Time limit of each SLURM job: minutes or D-HH:MM:SS "
                                      "[default: 60]."),
]


def executor_options(f: Callable) -> Callable:
    """Add `--executor` and its options; they reach the command as keyword arguments."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def executor_from_options(kwargs: dict) -> ExecutorOptions:
    """Pop the executor options from a command's keyword arguments."""
    names = ("executor", "ray_address", "cpus_per_job", "gpus_per_job", "max_parallel",
             "slurm_partition", "slurm_time")
    values = {k: kwargs.pop(k) for k in names}
    return ExecutorOptions(name=values.pop("executor"), **values)


class PointsBar:
    """A tqdm bar over points on stderr: finished out of total (so its ETA is per point), with
    running, waiting (claimed by another driver), cached and failed counts beside it."""

    def __init__(self, *, quiet: bool, desc: str) -> None:
        self._quiet, self._desc = quiet, desc
        self._bar = None

    def __call__(self, state: RunProgress) -> None:
        if self._quiet:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=state.total, unit="point", desc=self._desc, file=sys.stderr,
                             leave=False)
        self._bar.update(state.done + state.failed - self._bar.n)
        self._bar.set_postfix_str(f"running {state.running}, waiting {state.waiting}, "
                                  f"cached {state.cached}, failed {state.failed}", refresh=False)
        self._bar.refresh()

    def __enter__(self) -> PointsBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


__all__ = ["PointsBar", "executor_from_options", "executor_options"]
