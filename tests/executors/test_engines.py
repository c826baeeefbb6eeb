"""Ray and submitit run the same graph to the same results, and report failures the same way.

Ray runs on one local two-CPU cluster for the session; submitit runs its `local` executor
(one subprocess per job: the real pickling, job folder and log path up to `sbatch`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest
from executor_jobs import EXPECTED, executions, graph

from safebasin.errors import PointsFailedError
from safebasin.executors import (
    ExecutorOptions,
    RayExecutor,
    RunProgress,
    SlurmExecutor,
    run_points,
)


def _kill_when_started(pid_file, seen: list[int]) -> threading.Thread:
    """SIGKILL the worker process that writes `pid_file`, as soon as it does."""
    def kill() -> None:
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.02)
        seen.append(int(pid_file.read_text()))
        os.kill(seen[0], signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_ray_gives_the_local_results_running_independent_points_together(ray_cluster, tmp_path):
    seen: list[RunProgress] = []
    assert run_points(graph(sleep=0.2), workdir=tmp_path, executor=RayExecutor(),
                      progress=seen.append) == EXPECTED
    assert Counter(executions(tmp_path)) == dict.fromkeys(EXPECTED, 1)
    assert max(s.running for s in seen) == 3  # a, b and e at once; c and d wait for them


def test_ray_worker_killed_mid_point_fails_it_and_a_rerun_resumes(ray_cluster, tmp_path):
    never = tmp_path / "never"
    killed: list[int] = []
    thread = _kill_when_started(tmp_path / "points" / "c" / "pid", killed)
    with pytest.raises(PointsFailedError, match="2 of 5 points failed, first point c") as info:
        run_points(graph(c={"wait_for": str(never)}), workdir=tmp_path, executor=RayExecutor())
    thread.join()
    assert set(info.value.failures) == {"c", "d"}
    assert killed and killed[0] != os.getpid()
    assert run_points(graph(), workdir=tmp_path, executor=RayExecutor()) == EXPECTED
    assert Counter(executions(tmp_path)) == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1}


def test_ray_point_error_is_reported_with_its_dependents_after_the_others(ray_cluster,
                                                                          tmp_path):
    with pytest.raises(PointsFailedError) as info:
        run_points(graph(b={"fail": True}), workdir=tmp_path, executor=RayExecutor())
    assert info.value.failures == {
        "b": "ValueError: point b was told to fail",
        "c": "dependency point b (b) failed",
        "d": "dependency point c (c) failed",
    }
    assert info.value.exit_code == 1
    assert sorted(executions(tmp_path)) == ["a", "b", "e"]


def test_submitit_job_error_is_reported_with_its_dependents(worker_env, tmp_path):
    executor = SlurmExecutor(cluster="local", poll_s=0.05)
    with pytest.raises(PointsFailedError) as info:
        run_points(graph(a={"fail": True}), workdir=tmp_path, executor=executor)
    assert set(info.value.failures) == {"a", "c", "d"}
    assert info.value.failures["a"].startswith("ValueError: point a was told to fail (job ")
    assert run_points(graph(), workdir=tmp_path) == EXPECTED  # the local executor resumes
    assert Counter(executions(tmp_path)) == {"a": 2, "b": 1, "c": 1, "d": 1, "e": 1}


def test_slurm_points_are_one_sbatch_array_with_the_options(tmp_path, monkeypatch):
    """The real submitit SLURM path up to `sbatch`, which a fake on PATH records."""
    bin_dir, script = tmp_path / "bin", tmp_path / "array.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {script}\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = ExecutorOptions(name="slurm", slurm_partition="gpu", slurm_time="2:00:00",
                               gpus_per_job=1, cpus_per_job=4, max_parallel=2).build()
    executor.start(tmp_path / "work", 60.0)
    independent = [p for p in graph() if not p.deps]
    executor.submit([(p, {}) for p in independent])
    assert executor.in_flight() == 3
    lines = set(script.read_text().splitlines())
    assert {"#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --array=0-2%2",
            "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4"} <= lines
    assert any(line.startswith("#SBATCH --output=") and str(tmp_path / "work" / "slurm") in line
               for line in lines)
