"""Executors: run a graph of cached points in process, on Ray, or on SLURM through submitit.

A sweep, a `tune` search and a `landscape` grid are all sets of *points* (a fine-tune, or a
merge plus its evaluations), each with a content key, the keys it depends on, and a function
that returns a JSON-able result. `run_points` runs those not yet finished, each as soon as its
dependencies are, on one of three engines behind one interface, and returns results by key.
The cache is a folder on a shared filesystem (see `cache`): results are published atomically,
a point is claimed before it runs (two workers never run it twice), and a dead worker's claim
expires after a lease. Ray and submitit are optional and imported only when used.

Sits beside `checkpoint/`: it imports nothing of safebasin's but `errors`, so every layer
above (sweep, search) can hand it its points.

    from safebasin.executors import Point, RayExecutor, run_points
    points = [Point("ft-1a2b", finetune, args=(cfg,)),
              Point("ev-3c4d", evaluate, args=(cfg,), deps=("ft-1a2b",))]
    results = run_points(points, workdir="work", executor=RayExecutor(gpus_per_job=1))
"""

from __future__ import annotations

from .base import Executor, LocalExecutor
from .cache import DEFAULT_LEASE_S, PointCache
from .options import EXECUTORS, ExecutorOptions
from .points import Point, PointContext
from .run import ProgressCallback, RunProgress, run_points

__all__ = [
    "DEFAULT_LEASE_S",
    "EXECUTORS",
    "Executor",
    "ExecutorOptions",
    "LocalExecutor",
    "Point",
    "PointCache",
    "PointContext",
    "ProgressCallback",
    "RayExecutor",
    "RunProgress",
    "SlurmExecutor",
    "run_points",
]


def __getattr__(name: str):
    # the engines' modules import nothing heavy, but keep `import safebasin.executors` minimal
    if name == "RayExecutor":
        from .ray_engine import RayExecutor

        return RayExecutor
    if name == "SlurmExecutor":
        from .slurm_engine import SlurmExecutor

        return SlurmExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
