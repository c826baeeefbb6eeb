"""The smoke sweep on Ray and on submitit's local executor writes the local executor's results.

The grid: one fine-tune with an online EMA and a task-arithmetic merge matched to it, so the
jobs have dependencies (θ₀ before everything, the run before its evaluations). Each engine runs
in its own work folder; `results.csv` must be byte-identical to the in-process sweep's.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.executors import RayExecutor, SlurmExecutor
from safebasin.sweep import parse_config, sweep

# tests/sweep's tiny model and steps; the numbers mean nothing
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
CONFIG = {
    "name": "engines",
    "toy": {"theta0": {"steps": 10, "warmup_steps": 2, "model": TINY}},
    "eval": {"max_new_tokens": 8, "limit": 6},
    "seeds": [0],
    "finetune": {"batch_size": 8, "steps": 4, "logging_steps": 2},
    "experiments": [{"name": "grid", "finetune": {"lr": [1.0e-3]}, "ema": [{"eta": 0.25}],
                     "merges": ["task-arithmetic"]}],
}


@pytest.fixture(scope="module")
def single_thread():
    """Workers run one torch thread (Ray's default for one CPU); so does the local run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_csv(tmp_path_factory, single_thread) -> bytes:
    out = tmp_path_factory.mktemp("local") / "results"
    outcome = sweep(parse_config(CONFIG), out)
    assert [r["method"] for r in outcome.rows] == ["theta0", "finetune", "ema",
                                                   "task-arithmetic"]
    return (out / "results.csv").read_bytes()


@pytest.fixture(scope="module")
def submitit_sweep(worker_env, tmp_path_factory) -> Iterator[tuple[Future, Path]]:
    """The submitit sweep, started in a background thread: (its future, its results folder).

    Its jobs are fresh processes that mostly import torch, one or two at a time, while its
    driver only polls; started first, it runs on the other core while the local and Ray
    sweeps run here. The submitit test waits for it (teardown does, if that test is skipped).
    """
    out = tmp_path_factory.mktemp("submitit") / "results"
    executor = SlurmExecutor(cluster="local", poll_s=0.1)
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(1) as pool:
        env.setenv("OMP_NUM_THREADS", "1")  # the job processes' torch threads
        yield pool.submit(sweep, parse_config(CONFIG), out, executor=executor), out


@pytest.mark.usefixtures("submitit_sweep")  # started first, so that it overlaps this test
def test_ray_sweep_writes_the_local_results(ray_cluster, local_csv, tmp_path):
    sweep(parse_config(CONFIG), tmp_path / "results", executor=RayExecutor())
    assert (tmp_path / "results" / "results.csv").read_bytes() == local_csv


@pytest.mark.slow  # ~15 s: a fresh process, importing torch, for each of 4 jobs in 3 rounds
def test_submitit_sweep_writes_the_local_results(submitit_sweep, local_csv):
    running, out = submitit_sweep
    running.result(timeout=600)  # raises what the sweep raised
    assert (out / "results.csv").read_bytes() == local_csv
    assert list((out / "work" / "slurm").glob("*/*_log.out"))


def test_option_of_another_executor_exits_2_before_any_work(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(cli, ["sweep", str(config), "-o", str(tmp_path / "out"),
                                      "--gpus-per-job", "1", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --gpus-per-job applies to the ray or slurm "
                                     "executor, not local")
    assert not (tmp_path / "out").exists()
