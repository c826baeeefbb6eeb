"""RESTA (arXiv 2402.11746) against θ_ft + β(θ₀ − θ_unaligned) computed in float64."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from support import load_state

from safebasin import merge
from safebasin.cli import cli


def _resta_reference(models, beta: float) -> dict[str, torch.Tensor]:
    a, ft, un = (load_state(models[k]) for k in ("base", "ft", "ft2"))
    return {k: ft[k].double() + beta * (a[k].double() - un[k].double()) for k in a}


def test_resta_matches_float64_reference(models, tmp_path):
    merge.resta(models["base"], models["ft"], models["ft2"], tmp_path / "out", beta=0.5)
    out = load_state(tmp_path / "out")
    for k, ref in _resta_reference(models, 0.5).items():
        assert out[k].dtype == torch.float32
        torch.testing.assert_close(out[k].double(), ref, rtol=1e-6, atol=1e-6)


def test_resta_negative_beta_moves_toward_unaligned(models, tmp_path):
    merge.resta(models["base"], models["ft"], models["ft2"], tmp_path / "out", beta=-1.25)
    out = load_state(tmp_path / "out")
    for k, ref in _resta_reference(models, -1.25).items():
        torch.testing.assert_close(out[k].double(), ref, rtol=1e-6, atol=1e-6)


def test_resta_beta_zero_returns_finetuned_exactly(models, tmp_path):
    merge.resta(models["base"], models["ft"], models["ft2"], tmp_path / "out", beta=0.0)
    out, ft = load_state(tmp_path / "out"), load_state(models["ft"])
    assert set(out) == set(ft)
    assert all(torch.equal(out[k], ft[k]) for k in ft)


def test_resta_recipe_records_roles_beta_and_coefficients(models, tmp_path):
    recipe = merge.resta(models["base"], models["ft"], models["ft2"], tmp_path / "out",
                         beta=0.5)
    written = json.loads((tmp_path / "out" / "safebasin_recipe.json").read_text())
    assert written["method"] == recipe["method"] == "resta"
    assert written["parameters"]["beta"] == 0.5
    assert [e["role"] for e in written["inputs"]] == ["base", "finetuned", "unaligned"]
    assert written["coefficients"] == pytest.approx([0.5, 1.0, -0.5], abs=1e-12)
    assert "--beta 0.5" in (tmp_path / "out" / "README.md").read_text()


def test_cli_resta_writes_the_merge(models, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "resta", str(models["base"]), str(models["ft"]),
                                 str(models["ft2"]), "-o", str(out), "--beta", "0.3", "-q"])
    assert r.exit_code == 0, r.output
    got = load_state(out)
    for k, ref in _resta_reference(models, 0.3).items():
        torch.testing.assert_close(got[k].double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta, n_models, needle", [
    ("nan", 3, "--beta must be a finite number"),
    ("inf", 3, "--beta must be a finite number"),
    ("0.5", 2, "needs three models"),
    ("0.5", 4, "needs three models"),
])
def test_cli_resta_refuses_bad_input_in_one_line(models, tmp_path, beta, n_models, needle):
    paths = [str(models[k]) for k in ("base", "ft", "ft2", "ft")][:n_models]
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "resta", *paths, "-o", str(out), "--beta", beta])
    assert r.exit_code == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
