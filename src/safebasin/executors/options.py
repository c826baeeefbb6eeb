"""The executor a command line asks for: `--executor local|ray|slurm` and its options."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .base import Executor, LocalExecutor

EXECUTORS = ("local", "ray", "slurm")
_ONLY = {  # option -> the executors it applies to
    "ray_address": ("ray",),
    "cpus_per_job": ("ray", "slurm"),
    "gpus_per_job": ("ray", "slurm"),
    "max_parallel": ("ray", "slurm"),
    "slurm_partition": ("slurm",),
    "slurm_time": ("slurm",),
}


@dataclass(frozen=True)
class ExecutorOptions:
    """What `--executor` and its options say; None means "not given" (the engine's default).

    Attributes:
        name: `local` (in process, the default), `ray` or `slurm`.
        ray_address: the Ray cluster to join (None: join the local one or start it).
        cpus_per_job, gpus_per_job: resources of each point's task or job (default 1 and 0).
        max_parallel: most points in flight (SLURM: the job array's `%N`).
        slurm_partition: `--partition` of the jobs.
        slurm_time: time limit of each job (`MM`, `HH:MM:SS`, `D-HH:MM:SS`; default 60 min).
        slurm_cluster: `slurm`, or `local` for submitit's local executor (tests).
    """

    name: str = "local"
    ray_address: str | None = None
    cpus_per_job: float | None = None
    gpus_per_job: float | None = None
    max_parallel: int | None = None
    slurm_partition: str | None = None
    slurm_time: str | None = None
    slurm_cluster: str = "slurm"

    def _check(self) -> None:
        if self.name not in EXECUTORS:
            raise UsageError(f"unknown executor {self.name!r}: choose one of "
                             f"{', '.join(EXECUTORS)}")
        stray = [k for k, names in _ONLY.items()
                 if getattr(self, k) is not None and self.name not in names]
        if stray:
            raise UsageError(f"`{stray[0]}` applies to the {' or '.join(_ONLY[stray[0]])} "
                             f"executor, not {self.name}")
        for k in ("cpus_per_job", "gpus_per_job"):
            v = getattr(self, k)
            if v is not None and (v < 0 or (k == "cpus_per_job" and v == 0)):
                raise UsageError(f"`{k}` must be positive, not {v}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise UsageError(f"`max_parallel` must be at least 1, not {self.max_parallel}")

    def build(self) -> Executor:
        """The executor (its engine is imported only when a run starts it).

        Raises:
            UsageError: an unknown executor, an option of another executor, a bad value.
        """
        self._check()
        cpus = 1.0 if self.cpus_per_job is None else self.cpus_per_job
        gpus = 0.0 if self.gpus_per_job is None else self.gpus_per_job
        if self.name == "ray":
            from .ray_engine import RayExecutor

            return RayExecutor(address=self.ray_address, cpus_per_job=cpus, gpus_per_job=gpus,
                               max_parallel=self.max_parallel)
        if self.name == "slurm":
            from .slurm_engine import SlurmExecutor, parse_slurm_time

            if cpus != int(cpus) or gpus != int(gpus):
                raise UsageError("SLURM jobs take whole CPUs and GPUs: give integers to "
                                 "`cpus_per_job` and `gpus_per_job`")
            minutes = parse_slurm_time(self.slurm_time) if self.slurm_time is not None else 60
            return SlurmExecutor(partition=self.slurm_partition, time_min=minutes,
                                 cpus_per_job=int(cpus), gpus_per_job=int(gpus),
                                 max_parallel=self.max_parallel, cluster=self.slurm_cluster)
        return LocalExecutor()


__all__ = ["EXECUTORS", "ExecutorOptions"]
