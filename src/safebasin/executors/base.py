"""The executor interface, and the local executor (in process, one point at a time).

An executor only ships `execute_point` calls to workers and hands back what came of them; the
driver (`run.run_points`) decides what is ready, and the cache decides who runs what. So every
engine keeps the same guarantees, and an engine is a page of code.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import MissingExtraError
from .points import Point
from .worker import Outcome, execute_point

# one point handed to an engine, with its dependencies' results
Call = tuple[Point, Mapping[str, Any]]
# what came of one: the worker's outcome, or the exception its point raised
Finished = tuple[str, "Outcome | BaseException"]


class WorkerError(RuntimeError):
    """A point's failure as an engine reported it in text: `str()` is `Type: message`."""


def import_extra(module: str, extra: str) -> ModuleType:
    """Import an optional engine, or raise one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{module} is not installed; install it with "
                                f"pip install \"safebasin[{extra}]\"") from e


class Executor(ABC):
    """Runs `execute_point` calls somewhere and reports them as they finish.

    Attributes:
        name: the engine, as the CLI spells it.
        max_parallel: most points in flight at once (None: as many as are ready).
        fail_fast: re-raise a point's exception at once (local) instead of finishing the
            other points first and reporting every failure (Ray, SLURM).
        poll_s: how long the driver waits between looks at the cache for points claimed elsewhere.
    """

    name: str = ""
    max_parallel: int | None = None
    fail_fast: bool = False
    poll_s: float = 1.0

    def start(self, workdir: Path, lease_s: float) -> None:
        self.workdir, self.lease_s = workdir, lease_s

    @abstractmethod
    def submit(self, calls: list[Call]) -> None:
        """Start these points (all independent of each other and of everything in flight)."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Finished]:
        """The points finished since the last call, waiting up to `timeout` s for one."""

    @abstractmethod
    def in_flight(self) -> int:
        """Points submitted and not yet reported."""

    def close(self) -> None:  # noqa: B027 (optional hook: most engines hold nothing)
        """Release the engine (called once, also after errors)."""


class LocalExecutor(Executor):
    """Runs each point in this process, one at a time: today's behaviour and the default.

    A point's exception propagates unchanged (a `SafebasinError` becomes the CLI's one line)."""

    name = "local"
    max_parallel = 1  # submit one at a time, so the cache is read again before each point
    fail_fast = True
    poll_s = 0.5

    def __init__(self) -> None:
        self._queue: list[Call] = []

    def submit(self, calls: list[Call]) -> None:
        self._queue += calls

    def wait(self, timeout: float) -> list[Finished]:
        if not self._queue:
            return []
        point, deps = self._queue.pop(0)
        try:
            return [(point.key, execute_point(point, self.workdir, deps, self.lease_s))]
        except Exception as e:  # the driver re-raises it (fail_fast)
            return [(point.key, e)]

    def in_flight(self) -> int:
        return len(self._queue)


__all__ = ["Call", "Executor", "Finished", "LocalExecutor", "WorkerError", "import_extra"]
