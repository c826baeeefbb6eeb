"""What runs on a worker: one point, under its claim, with its result published atomically.

`execute_point` is the single function every engine ships to its workers (in process, as a Ray
task, as a SLURM job through submitit), so the cache rules hold the same way everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .cache import PointCache
from .points import Point, PointContext

log = logging.getLogger(__name__)

Status = Literal["ran", "cached", "busy"]


@dataclass(frozen=True)
class Outcome:
    """What a worker did with a point: `ran` it, found it `cached`, or found it `busy`
    (claimed by a live worker elsewhere: the driver then waits for that worker's result)."""

    key: str
    status: Status
    result: Any = None
    host: str = ""
    pid: int = 0
    seconds: float = 0.0


def execute_point(point: Point, workdir: str | Path, deps: Mapping[str, Any],
                  lease_s: float) -> Outcome:
    """Run `point` unless it is finished or claimed; exceptions of its function propagate."""
    cache = PointCache(workdir, lease_s=lease_s)
    start = time.perf_counter()
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    done, result = cache.load(point)
    if done:
        return Outcome(point.key, "cached", result, **where)
    claim = cache.try_claim(point)
    if claim is None:
        return Outcome(point.key, "busy", **where)
    with claim:
        done, result = cache.load(point)  # published between our look and our claim
        if done:
            return Outcome(point.key, "cached", result, **where)
        log.info("running %s", point.name)
        context = PointContext(folder=cache.folder(point), workdir=cache.workdir,
                               deps=dict(deps))
        result = cache.publish(point, point.fn(context, *point.args, **point.kwargs))
    return Outcome(point.key, "ran", result, seconds=time.perf_counter() - start, **where)


__all__ = ["Outcome", "execute_point"]
