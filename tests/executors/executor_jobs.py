"""Point functions for the executor tests: importable by name on Ray and submitit workers
(the tests put this folder on PYTHONPATH), writing files and logging every execution."""

from __future__ import annotations

import os
import time
from pathlib import Path

from safebasin.executors import Point

LOG = "executions.log"

# a -> c <- b, c -> d, e alone: totals add each point's value to its dependencies' totals
EXPECTED = {
    "a": {"total": 1, "deps": []},
    "b": {"total": 2, "deps": []},
    "c": {"total": 1 + 2 + 4, "deps": ["a", "b"]},
    "d": {"total": 1 + 2 + 4 + 8, "deps": ["c"]},
    "e": {"total": 16, "deps": []},
}


def graph(sleep: float = 0.0, **per_point: dict) -> list[Point]:
    """The points of EXPECTED; `per_point[key]` adds keyword arguments to one of them."""
    spec = {"a": (1, ()), "b": (2, ()), "c": (4, ("a", "b")), "d": (8, ("c",)), "e": (16, ())}
    return [Point(key, record, (value,), {"sleep": sleep, **per_point.get(key, {})}, deps=deps,
                  label=f"point {key}")
            for key, (value, deps) in spec.items()]


def executions(workdir: Path) -> list[str]:
    """The keys of the points that ran, one per execution, in order."""
    path = Path(workdir) / LOG
    return path.read_text().split() if path.exists() else []


def record(ctx, value: int, *, sleep: float = 0.0, fail: bool = False, wait_for: str = ""):
    """Log the execution, write a file, sleep, and return `value` plus the dependencies'
    totals. With `wait_for`, block until that file exists (a test's cue to kill us)."""
    with open(ctx.workdir / LOG, "a") as f:  # O_APPEND: one short write, one line
        f.write(f"{ctx.folder.name}\n")
    (ctx.folder / "pid").write_text(str(os.getpid()))
    while wait_for and not Path(wait_for).exists():
        time.sleep(0.02)
    time.sleep(sleep)
    if fail:
        raise ValueError(f"point {ctx.folder.name} was told to fail")
    (ctx.folder / "out.txt").write_text(str(value))
    total = value + sum(d["total"] for d in ctx.deps.values())
    return {"total": total, "deps": sorted(ctx.deps)}
