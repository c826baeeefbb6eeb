"""`--executor` and its options: which engine they build, and one clear error for misuse."""

from __future__ import annotations

import sys

import pytest
from executor_jobs import graph

from safebasin.errors import MissingExtraError, UsageError
from safebasin.executors import ExecutorOptions, LocalExecutor, run_points
from safebasin.executors.ray_engine import RayExecutor
from safebasin.executors.slurm_engine import SlurmExecutor, parse_slurm_time


@pytest.mark.parametrize(("text", "minutes"), [
    ("90", 90), ("30:30", 31), ("02:00:00", 120), ("1-00", 1440), ("1-02:30", 1590),
    ("0-00:00:59", 1),
])
def test_slurm_time_formats_become_whole_minutes(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("text", ["", "0", "1h", "1:2:3:4", "-5", "00:00"])
def test_slurm_time_that_is_not_a_limit_is_refused(text):
    with pytest.raises(UsageError, match="is not a SLURM time limit"):
        parse_slurm_time(text)


def test_default_options_build_the_local_executor():
    assert isinstance(ExecutorOptions().build(), LocalExecutor)


def test_ray_options_reach_the_ray_executor():
    ex = ExecutorOptions(name="ray", ray_address="auto", cpus_per_job=2, gpus_per_job=0.5,
                         max_parallel=3).build()
    assert isinstance(ex, RayExecutor)
    assert (ex.address, ex.cpus_per_job, ex.gpus_per_job, ex.max_parallel) == ("auto", 2, 0.5, 3)


def test_slurm_options_reach_the_slurm_executor():
    ex = ExecutorOptions(name="slurm", slurm_partition="gpu", slurm_time="1-00:00:00",
                         gpus_per_job=1, max_parallel=8).build()
    assert isinstance(ex, SlurmExecutor)
    assert (ex.partition, ex.time_min, ex.gpus_per_job, ex.cpus_per_job, ex.max_parallel) == \
        ("gpu", 1440, 1, 1, 8)


@pytest.mark.parametrize(("options", "message"), [
    ({"name": "local", "gpus_per_job": 1}, "`gpus_per_job` applies to the ray or slurm executor"),
    ({"name": "ray", "slurm_time": "10"}, "`slurm_time` applies to the slurm executor, not ray"),
    ({"name": "slurm", "ray_address": "auto"}, "`ray_address` applies to the ray executor"),
    ({"name": "slurm", "gpus_per_job": 0.5}, "SLURM jobs take whole CPUs and GPUs"),
    ({"name": "ray", "cpus_per_job": 0}, "`cpus_per_job` must be positive"),
    ({"name": "ray", "max_parallel": 0}, "`max_parallel` must be at least 1"),
    ({"name": "dask"}, "unknown executor 'dask'"),
])
def test_options_that_do_not_fit_are_refused(options, message):
    with pytest.raises(UsageError, match=message):
        ExecutorOptions(**options).build()


@pytest.mark.parametrize(("name", "module", "extra"), [("ray", "ray", "ray"),
                                                       ("slurm", "submitit", "slurm")])
def test_missing_engine_names_its_extra(tmp_path, monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    executor = ExecutorOptions(name=name, slurm_cluster="local").build()
    with pytest.raises(MissingExtraError,
                       match=rf'^{module} is not installed; install it with pip install '
                             rf'"safebasin\[{extra}\]"$'):
        run_points(graph(), workdir=tmp_path, executor=executor)
    assert not (tmp_path / "points").exists()


def test_slurm_without_sbatch_is_refused_before_submitting(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    with pytest.raises(UsageError, match="needs SLURM on this machine"):
        run_points(graph(), workdir=tmp_path, executor=ExecutorOptions(name="slurm").build())
    assert not (tmp_path / "points").exists()
