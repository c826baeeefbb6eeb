"""Fixtures for the executor tests: a small graph of points, and one Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def worker_env():
    """Workers in other processes (Ray, submitit) import `executor_jobs` by name."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), old) if p)
    yield
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="session")
def ray_cluster(worker_env):
    """One local two-CPU Ray cluster for the session (it takes ~10 s to start)."""
    ray = pytest.importorskip("ray", reason="Ray is in the [ray] and [dev] extras")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
