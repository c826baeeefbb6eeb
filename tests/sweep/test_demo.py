"""`safebasin demo --smoke`: every path of the demo (θ₀, EMA, merges, L2-to-init) end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from safebasin.cli import cli


def _invoke(args: list[str]):
    """The CLI with one torch thread (the fast setting for toy models), restoring the
    session's thread count after, since `--threads` sets torch's global one."""
    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(cli, [*args, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


DEMO = ["demo", "--smoke", "--quiet"]
METHODS = ("theta0", "finetune", "ema", "offline-ema", "task-arithmetic", "l2-per-tensor",
           "l2-reg", "path-average", "anchor-lerp", "path-average-lerp")


@pytest.fixture(scope="module")
def demo(demo_run):
    """(work folder, printed output, rows of results.csv) of `demo --smoke`, run by the CLI in
    a child process that starts with the session (`early_jobs`)."""
    workdir, output = demo_run
    with (workdir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    return workdir, output, rows


def test_demo_writes_its_files(demo):
    workdir, _, _ = demo
    for name in ("demo.yaml", "results.csv", "summary.md", "summary.csv", "sweep.json",
                 "asr_vs_distance.png", "utility_vs_distance.png", "asr_vs_utility.png"):
        assert (workdir / name).is_file(), name
    assert (workdir / "asr_vs_distance.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_evaluates_every_method(demo):
    _, _, rows = demo
    assert sorted({r["method"] for r in rows}) == sorted(METHODS)


def test_matched_merges_sit_at_the_ema_distance(demo):
    _, _, rows = demo
    ema = next(r for r in rows if r["method"] == "ema")
    d = float(ema["distance"])
    for method in ("task-arithmetic", "offline-ema"):
        row = next(r for r in rows if r["method"] == method)
        assert float(row["distance"]) == pytest.approx(d, rel=1e-4)
        assert float(row["target_distance"]) == pytest.approx(d, rel=1e-5)
    # per-tensor radii never exceed the fine-tune's own per-tensor distances, so at most d
    per_tensor = next(r for r in rows if r["method"] == "l2-per-tensor")
    assert float(per_tensor["distance"]) <= d * (1 + 1e-4)
    offline = next(r for r in rows if r["method"] == "offline-ema")
    assert float(offline["offline_online_max_abs_diff"]) < 1e-5
    assert int(offline["ema_updates"]) == 12


def test_demo_prints_the_table(demo):
    _, out, _ = demo
    assert "θ₀: ASR " in out
    assert "| lr | η | every | updates | method | distance | ASR % |" in out
    for method in METHODS[1:]:
        assert f"| {method} |" in out
    assert "offline EMA vs online EMA: max |Δθ| = " in out
    assert "demo.yaml (rerun or edit it with `safebasin sweep`)" in out


def test_demo_again_reuses_everything(demo):
    workdir, _, rows = demo
    result = _invoke([*DEMO, "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    with (workdir / "results.csv").open() as f:
        assert list(csv.DictReader(f)) == rows


def test_demo_maps_readable_names_to_model_folders(demo):
    workdir, _, _ = demo
    lines = (workdir / "models.csv").read_text(encoding="utf-8").splitlines()
    named = dict(line.split(",", 1) for line in lines[1:])
    assert lines[0] == "name,path"
    assert set(named) == {"theta0", "finetune", "harmful_prompts", "tuned"}
    assert (Path(named["theta0"]) / "config.json").is_file()
    assert any(Path(named["finetune"]).glob("*.safetensors"))
    assert (workdir / "landscape" / "landscape.csv").is_file()
