"""Points as Ray tasks: each one a task with `cpus_per_job` CPUs and `gpus_per_job` GPUs.

Ray is imported when the executor starts (`pip install "safebasin[ray]"`). Without an address
`ray.init()` joins the cluster `ray start` left on this machine (or `$RAY_ADDRESS`), else starts
a local one and shuts it down at the end; a cluster this process already joined is reused and
left running. Workers must import safebasin (and each point's function) from the same code:
on a multi-node cluster, install it on every node or ship it with a Ray runtime environment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .base import Call, Executor, Finished, import_extra
from .worker import execute_point

log = logging.getLogger(__name__)


class RayExecutor(Executor):
    """Runs each point as a Ray task; independent points run concurrently as resources allow.

    Args:
        address: a cluster to join (`ray://host:10001`, `host:6379`, `auto`); None: join the
            local one or start it.
        cpus_per_job, gpus_per_job: the task's resources (fractions allowed: 0.5 GPU shares one).
        max_parallel: most tasks submitted at once (None: every ready point).
        init_kwargs: more `ray.init` arguments when this executor starts Ray.
    """

    name = "ray"
    poll_s = 1.0

    def __init__(self, *, address: str | None = None, cpus_per_job: float = 1.0,
                 gpus_per_job: float = 0.0, max_parallel: int | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        self.address, self.cpus_per_job, self.gpus_per_job = address, cpus_per_job, gpus_per_job
        self.max_parallel = max_parallel
        self._init_kwargs = dict(init_kwargs or {})
        self._refs: dict[Any, str] = {}  # ObjectRef -> point key
        self._owned = False

    def start(self, workdir: Path, lease_s: float) -> None:
        super().start(workdir, lease_s)
        self._ray = ray = import_extra("ray", "ray")
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, **self._init_kwargs)
            except (ConnectionError, ValueError) as e:
                where = self.address or "this machine"
                raise UsageError(f"cannot join the Ray cluster at {where}: "
                                 f"{str(e).strip().splitlines()[0]}") from e
            self._owned = True
        self._warn_if_infeasible(ray.cluster_resources())
        # no Ray-level retry: a crashed worker's point is reported, and a rerun resumes it
        self._task = ray.remote(execute_point).options(
            num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job, max_retries=0)

    def _warn_if_infeasible(self, resources: dict) -> None:
        """Ray waits forever for a task no node can hold; say so (an autoscaler may add one)."""
        for kind, need in (("CPU", self.cpus_per_job), ("GPU", self.gpus_per_job)):
            if need > resources.get(kind, 0):
                log.warning("each point asks for %g %s but the Ray cluster has %g: points wait "
                            "until a node that large joins", need, kind, resources.get(kind, 0))

    def submit(self, calls: list[Call]) -> None:
        workdir = str(self.workdir)
        for point, deps in calls:
            self._refs[self._task.remote(point, workdir, dict(deps), self.lease_s)] = point.key

    def _get(self, ref) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the point raised: report its own error
            cause = getattr(e, "cause", None)
            return cause if isinstance(cause, BaseException) else e
        except ray.exceptions.RayError as e:  # the worker died, the task was cancelled, ...
            return e

    def wait(self, timeout: float) -> list[Finished]:
        if not self._refs:
            return []
        refs = list(self._refs)
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if ready:  # collect every other one that is ready too
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return [(self._refs.pop(ref), self._get(ref)) for ref in ready]

    def in_flight(self) -> int:
        return len(self._refs)

    def close(self) -> None:
        if self._refs:
            for ref in self._refs:
                self._ray.cancel(ref, force=True)
            self._refs.clear()
        if self._owned:
            self._ray.shutdown()
            self._owned = False


__all__ = ["RayExecutor"]
