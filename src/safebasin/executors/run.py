"""The driver: run a graph of points on an executor, each as soon as its dependencies are done.

The driver never computes a point itself (unless the executor is local); it reads the cache,
submits the points whose dependencies are finished, and collects results. A point another
driver's worker is computing (a live claim) is waited for, not run twice; if that claim goes
stale without a result, the point is submitted again. Killing the driver loses nothing: a
restart finds every finished point in the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PointsFailedError, UsageError
from .base import Executor, LocalExecutor, WorkerError
from .cache import DEFAULT_LEASE_S, PointCache
from .points import Point, check_graph
from .worker import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunProgress:
    """A snapshot for a progress bar: `done` includes `cached`; `running` counts points
    submitted (queued or computing); `waiting` counts points computed by another driver."""

    total: int
    done: int
    cached: int
    running: int
    waiting: int
    failed: int
    last: str = ""  # the name of the point that just finished


ProgressCallback = Callable[[RunProgress], None]


def _first_line(error: BaseException) -> str:
    if isinstance(error, WorkerError):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


class _Driver:
    """The state of one `run_points` call."""

    def __init__(self, points: dict[str, Point], cache: PointCache, executor: Executor,
                 progress: ProgressCallback | None) -> None:
        self.points, self.cache, self.executor, self.progress = points, cache, executor, progress
        self.results: dict[str, Any] = {}
        self.failed: dict[str, str] = {}
        self.pending = list(points)  # in the caller's order
        self.submitted: set[str] = set()
        self.waiting: set[str] = set()
        self.cached = 0

    def _report(self, last: str = "") -> None:
        if self.progress is not None:
            self.progress(RunProgress(
                total=len(self.points), done=len(self.results), cached=self.cached,
                running=len(self.submitted), waiting=len(self.waiting),
                failed=len(self.failed), last=last))

    def _finish(self, key: str, result: Any, *, cached: bool) -> None:
        self.results[key] = result
        self.cached += cached
        self._report(self.points[key].name)

    def _fail(self, key: str, reason: str) -> None:
        self.failed[key] = reason
        self._report(self.points[key].name)

    def _ready(self) -> list[Point]:
        """Pending points to submit now; settles those finished or claimed elsewhere, and
        those whose dependencies failed."""
        room = self.executor.max_parallel
        ready, still = [], []
        for key in self.pending:
            point = self.points[key]
            bad = next((d for d in point.deps if d in self.failed), None)
            if bad is not None:
                self._fail(key, f"dependency {self.points[bad].name} failed")
                continue
            if not all(d in self.results for d in point.deps):
                still.append(key)
                continue
            done, result = self.cache.load(point)
            if done:
                self._finish(key, result, cached=True)
            elif self.cache.is_claimed(point):
                self.waiting.add(key)
            elif room is None or len(self.submitted) + len(ready) < room:
                ready.append(point)
            else:
                still.append(key)
        self.pending = still
        return ready

    def _collect(self, key: str, outcome: Outcome | BaseException) -> None:
        self.submitted.discard(key)
        if isinstance(outcome, BaseException):
            if self.executor.fail_fast:
                raise outcome
            log.error("point %s failed: %s", self.points[key].name, outcome)
            self._fail(key, _first_line(outcome))
        elif outcome.status == "busy":
            self.waiting.add(key)
            self._report()
        else:
            self._finish(key, outcome.result, cached=outcome.status == "cached")

    def _recheck_waiting(self) -> None:
        """Points claimed elsewhere: take their result, or queue them again if the claim
        went away (its worker failed or died) without one."""
        for key in sorted(self.waiting):
            point = self.points[key]
            done, result = self.cache.load(point)
            if done:
                self.waiting.discard(key)
                self._finish(key, result, cached=True)
            elif not self.cache.is_claimed(point):
                self.waiting.discard(key)
                self.pending.insert(0, key)

    def run(self) -> dict[str, Any]:
        self._report()
        while self.pending or self.submitted or self.waiting:
            ready = self._ready()
            if ready:
                deps = [{d: self.results[d] for d in p.deps} for p in ready]
                self.executor.submit(list(zip(ready, deps, strict=True)))
                self.submitted.update(p.key for p in ready)
                self._report()
            if self.submitted:
                for key, outcome in self.executor.wait(self.executor.poll_s):
                    self._collect(key, outcome)
            elif self.waiting:
                time.sleep(self.executor.poll_s)
            elif self.pending and not ready:
                break  # unreachable after check_graph; never spin
            self._recheck_waiting()
        return {key: self.results[key] for key in self.points if key in self.results}


def run_points(points: Iterable[Point], *, workdir: str | Path,
               executor: Executor | None = None, progress: ProgressCallback | None = None,
               lease_s: float = DEFAULT_LEASE_S) -> dict[str, Any]:
    """Run every point not yet finished under `workdir`, dependencies first; results by key.

    Independent points run concurrently on Ray and SLURM; a point starts only when every point
    in its `deps` is finished. Finished points are read from the cache, not run again. On the
    local executor a point's exception propagates at once; on Ray and SLURM the other points
    finish first (all cached) and then `PointsFailedError` lists the failures.

    Example:
        >>> results = run_points([Point("a1", train), Point("b2", evaluate, deps=("a1",))],
        ...                      workdir="work", executor=RayExecutor())  # doctest: +SKIP

    Raises:
        UsageError: clashing keys, unknown dependencies, a cycle.
        MissingExtraError: the executor's engine is not installed.
        PointsFailedError: points that raised on a Ray or SLURM worker (and their dependents).
    """
    executor = executor or LocalExecutor()
    if lease_s <= 0:
        raise UsageError(f"the lease must be positive, not {lease_s}")
    by_key = check_graph(points)
    cache = PointCache(workdir, lease_s=lease_s)
    cache.workdir.mkdir(parents=True, exist_ok=True)
    executor.start(cache.workdir, lease_s)
    try:
        driver = _Driver(by_key, cache, executor, progress)
        results = driver.run()
    finally:
        executor.close()
    if driver.failed:
        key, reason = next(iter(driver.failed.items()))
        raise PointsFailedError(
            f"{len(driver.failed)} of {len(by_key)} points failed, first "
            f"{by_key[key].name}: {reason} (finished points are cached: rerun to resume)",
            driver.failed)
    return results


__all__ = ["ProgressCallback", "RunProgress", "run_points"]
