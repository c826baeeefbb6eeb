"""A real sweep in the toy world on a tiny model: CSV schema, caching, and resuming."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from safebasin.cli import cli
from safebasin.sweep import ROW_FIELDS


def _invoke(args: list[str]):
    """The CLI with one torch thread (the fast setting for toy models), restoring the
    session's thread count after, since `--threads` sets torch's global one."""
    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(cli, [*args, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


# a 2-layer, 32-wide model and a few steps: seconds per run; the numbers mean nothing
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
CONFIG = {
    "name": "two points",
    "toy": {"theta0": {"steps": 30, "warmup_steps": 3, "model": TINY}},
    "eval": {"max_new_tokens": 16, "limit": 12},
    "seeds": [0],
    "finetune": {"batch_size": 8, "steps": 4, "logging_steps": 2},
    "experiments": [{"name": "grid", "finetune": {"lr": [1.0e-3]}}],
}


def _sweep(tmp_path, config: dict, *extra: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _invoke(["sweep", str(path), "-o", str(tmp_path / "results"), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return result


def _rows(tmp_path) -> list[dict]:
    with (tmp_path / "results" / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ROW_FIELDS
        return list(reader)


def _stamps(tmp_path) -> dict[str, int]:
    work = tmp_path / "results" / "work"
    return {str(p.relative_to(work)): p.stat().st_mtime_ns
            for p in work.rglob("*") if p.name in ("point.json", "safebasin_finetune.json")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    result = _sweep(tmp_path, CONFIG)
    return tmp_path, result


def test_two_points_give_one_row_each_with_every_measure(swept):
    tmp_path, _ = swept
    rows = _rows(tmp_path)
    assert [(r["experiment"], r["method"]) for r in rows] == [("theta0", "theta0"),
                                                             ("grid", "finetune")]
    theta0, ft = rows
    assert float(theta0["distance"]) == 0.0
    assert float(ft["distance"]) > 0.0
    assert (ft["lr"], ft["batch_size"], ft["grad_accum"], ft["steps"], ft["seed"]) == \
        ("0.001", "8", "1", "4", "0")
    for r in rows:
        assert int(r["n"]) == 12
        assert 0.0 <= float(r["asr_low"]) <= float(r["asr"]) <= float(r["asr_high"]) <= 1.0
        assert float(r["asr"]) == int(r["successes"]) / 12
        assert 0.0 <= float(r["utility"]) <= 1.0 and r["utility_metric"] == "task_accuracy"
        assert 0.0 <= float(r["degenerate_rate"]) <= 1.0
        assert len(r["point"]) == 16


def test_outputs_and_printed_table(swept):
    tmp_path, result = swept
    out = tmp_path / "results"
    for name in ("results.csv", "summary.csv", "summary.md", "sweep.json",
                 "asr_vs_distance.png", "utility_vs_distance.png", "asr_vs_utility.png"):
        assert (out / name).is_file(), name
    assert "| lr | batch | accum | steps |" in result.output
    assert "| 0.001 | 8 | 1 | 4 |" in result.output
    assert f"wrote {out}: " in result.output
    assert json.loads((out / "sweep.json").read_text())["points"] == 2


def test_rerun_skips_finished_points(swept):
    tmp_path, _ = swept
    before, rows_before = _stamps(tmp_path), _rows(tmp_path)
    _sweep(tmp_path, CONFIG)
    assert _stamps(tmp_path) == before  # nothing retrained, nothing re-evaluated
    assert _rows(tmp_path) == rows_before


def test_a_new_grid_value_runs_only_the_new_point(swept):
    tmp_path, _ = swept
    before = _stamps(tmp_path)
    bigger = yaml.safe_load(yaml.safe_dump(CONFIG))
    bigger["experiments"][0]["finetune"]["lr"] = [1.0e-3, 3.0e-3]
    _sweep(tmp_path, bigger)
    after = _stamps(tmp_path)
    assert {k: after[k] for k in before} == before
    assert len(after) == len(before) + 2  # one run, one point
    assert [r["lr"] for r in _rows(tmp_path)] == ["", "0.001", "0.003"]
