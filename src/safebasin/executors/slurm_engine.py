"""Points as SLURM jobs through submitit: the ready points of each round are one job array.

submitit is imported when the executor starts (`pip install "safebasin[slurm]"`). The driver
runs on a login node (or in a small job of its own) and submits arrays with `sbatch`; each array
task unpickles one `execute_point` call, so the workers need the same Python environment on a
shared filesystem. submitit keeps each job's pickles and its stdout/stderr logs under
`WORKDIR/slurm/<job id>/`. `cluster="local"` runs the same submitit path on this machine
instead of `sbatch` (a subprocess per job), which is how the tests exercise it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .base import Call, Executor, Finished, WorkerError, import_extra
from .worker import execute_point

LOG_FOLDER = "slurm"
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_slurm_time(text: str | int) -> int:
    """Minutes from SLURM's time formats: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM[:SS]`
    (rounded up to whole minutes, which is what submitit takes).

    Raises:
        UsageError: anything else, or zero.
    """
    s = str(text).strip()
    m = _SLURM_TIME.fullmatch(s)
    total_s = 0
    if m:
        days, a, b, c = m.groups()
        if days is not None or c is not None:  # D-HH[:MM[:SS]] or HH:MM:SS
            hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        else:  # MM or MM:SS
            hours, minutes, seconds = 0, int(a), int(b or 0)
        total_s = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    if total_s <= 0:
        raise UsageError(f"`slurm_time` {s!r} is not a SLURM time limit: give minutes, "
                         "HH:MM:SS or D-HH:MM:SS")
    return -(-total_s // 60)


def _last_error_line(text: str) -> str:
    """`Type: message` from the traceback that submitit frames with dashed lines in a failed
    job's error, or "" if there is none."""
    parts = text.split("-" * 22)
    lines = [s.strip() for s in parts[1].splitlines() if s.strip()] if len(parts) >= 3 else []
    return lines[-1] if lines else ""


class SlurmExecutor(Executor):
    """Runs each point as one task of a SLURM job array, through submitit.

    Args:
        partition: `--partition` (None: the cluster's default).
        time_min: the time limit of each job, minutes.
        cpus_per_job: `--cpus-per-task`.
        gpus_per_job: GPUs per job (whole GPUs).
        max_parallel: most array tasks running at once (`--array=...%N`); None: SLURM decides.
        cluster: `"slurm"` (needs `sbatch`), or `"local"` to run submitit's local executor
            (a subprocess per job) on this machine.
        extra: more submitit parameters (`slurm_account`, `slurm_qos`, `mem_gb`, ...).
        poll_s: seconds between looks at the jobs' states (submitit rate-limits `sacct` itself).
    """

    name = "slurm"

    def __init__(self, *, partition: str | None = None, time_min: int = 60,
                 cpus_per_job: int = 1, gpus_per_job: int = 0, max_parallel: int | None = None,
                 cluster: str = "slurm", extra: dict[str, Any] | None = None,
                 poll_s: float = 5.0) -> None:
        self.partition, self.time_min, self.cluster = partition, time_min, cluster
        self.cpus_per_job, self.gpus_per_job = cpus_per_job, gpus_per_job
        self.max_parallel, self.poll_s = max_parallel, poll_s
        self._extra = dict(extra or {})
        self._jobs: dict[str, Any] = {}  # point key -> submitit Job

    def start(self, workdir: Path, lease_s: float) -> None:
        super().start(workdir, lease_s)
        submitit = import_extra("submitit", "slurm")
        if self.cluster == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
            raise UsageError("the slurm executor needs SLURM on this machine (no srun/sbatch on "
                             "PATH): run the driver on a login node")
        self._executor = submitit.AutoExecutor(folder=workdir / LOG_FOLDER / "%j",
                                               cluster=self.cluster)
        params: dict[str, Any] = {"name": "safebasin-point", "timeout_min": self.time_min,
                                  "cpus_per_task": self.cpus_per_job,
                                  "gpus_per_node": self.gpus_per_job, "tasks_per_node": 1,
                                  "nodes": 1, "slurm_partition": self.partition}
        if self.cluster == "slurm" and self.max_parallel is not None:
            params["slurm_array_parallelism"] = self.max_parallel
        self._executor.update_parameters(**params, **self._extra)

    def submit(self, calls: list[Call]) -> None:
        if not calls:
            return
        n = len(calls)
        jobs = self._executor.map_array(execute_point, [p for p, _ in calls],
                                        [self.workdir] * n, [dict(d) for _, d in calls],
                                        [self.lease_s] * n)
        self._jobs.update({p.key: job for (p, _), job in zip(calls, jobs, strict=True)})

    @staticmethod
    def _result(job: Any) -> Any:
        try:
            return job.result()
        except Exception as e:  # FailedJobError carries the point's traceback as text
            return WorkerError(f"{_last_error_line(str(e)) or type(e).__name__} "
                               f"(job {job.job_id}, logs in {job.paths.stderr.parent})")

    def wait(self, timeout: float) -> list[Finished]:
        deadline = time.monotonic() + timeout
        while self._jobs:
            done = [key for key, job in self._jobs.items() if job.done()]
            if done or time.monotonic() >= deadline:
                return [(key, self._result(self._jobs.pop(key))) for key in done]
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return []

    def in_flight(self) -> int:
        return len(self._jobs)

    def close(self) -> None:
        for job in self._jobs.values():
            try:
                job.cancel(check=False)
            except Exception:  # best effort: a job that already ended cannot be cancelled
                pass
        self._jobs.clear()


__all__ = ["LOG_FOLDER", "SlurmExecutor", "parse_slurm_time"]
