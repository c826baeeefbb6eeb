"""The smoke sweep on Ray and on submitit's local executor writes the local executor's results.

The sweep (`sweep_engines_config.CONFIG`) has dependencies: θ₀ before everything, the run
before its evaluations. Each engine runs in its own work folder; `results.csv` must be
byte-identical to the in-process sweep's. The submitit sweep runs in a child process started
with the session (`early_jobs`), and its test runs last.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from sweep_engines_config import CONFIG

from safebasin.cli import cli
from safebasin.executors import RayExecutor
from safebasin.sweep import parse_config, sweep


@pytest.fixture(scope="session")
def local_csv(tmp_path_factory) -> bytes:
    """The in-process sweep's results.csv, on one torch thread (Ray's default for one CPU)."""
    out = tmp_path_factory.mktemp("local") / "results"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = sweep(parse_config(CONFIG), out)
    finally:
        torch.set_num_threads(threads)
    assert [r["method"] for r in outcome.rows] == ["theta0", "finetune", "ema",
                                                   "task-arithmetic"]
    return (out / "results.csv").read_bytes()


@pytest.mark.late  # 3 s alone; 10 s more while the background jobs run
def test_ray_sweep_writes_the_local_results(ray_cluster, local_csv, tmp_path):
    sweep(parse_config(CONFIG), tmp_path / "results", executor=RayExecutor())
    assert (tmp_path / "results" / "results.csv").read_bytes() == local_csv


def test_submitit_sweep_writes_the_local_rows(submitit_sweep_run: Path, local_csv):
    """θ₀ and the fine-tune on submitit (fresh processes): the local sweep's rows for them.

    The fine-tune's point key differs (the local one also keeps an online EMA, which changes
    its key and not its weights); every other column must be equal."""
    local = list(csv.DictReader(io.StringIO(local_csv.decode())))
    with (submitit_sweep_run / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["theta0", "finetune"]
    want = [r for r in local if r["method"] in ("theta0", "finetune")]
    assert rows[0] == want[0]
    assert {**rows[1], "point": ""} == {**want[1], "point": ""}
    assert list((submitit_sweep_run / "work" / "slurm").glob("*/*_log.out"))


def test_option_of_another_executor_exits_2_before_any_work(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(cli, ["sweep", str(config), "-o", str(tmp_path / "out"),
                                      "--gpus-per-job", "1", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --gpus-per-job applies to the ray or slurm "
                                     "executor, not local")
    assert not (tmp_path / "out").exists()
