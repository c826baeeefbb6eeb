"""EDM2's power-function EMA profile: σ_rel ↔ γ, the weights at saved steps, the merge.

References are computed independently: the profile p(s) = (γ+1)s^γ on [0, 1] integrated
numerically in float64 (a fine trapezoid sum in numpy), never from the closed forms under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import load_state

from safebasin import merge
from safebasin.cli import cli
from safebasin.merge.ema_profile import (
    SIGMA_REL_MAX,
    power_ema_coefficients,
    sigma_rel_to_gamma,
    steps_from_names,
)

_GRID = np.linspace(0.0, 1.0, 2_000_001)  # h = 5e-7: trapezoid error ~1e-12 here


def _trapezoid(y: np.ndarray) -> float:
    h = _GRID[1] - _GRID[0]
    return float(h * (y.sum() - 0.5 * (y[0] + y[-1])))


def _profile(gamma: float) -> np.ndarray:
    return (gamma + 1.0) * _GRID**gamma


def _numerical_weights(sigma_rel: float, steps: list[float]) -> list[float]:
    """∫ p(s)·φₖ(s) ds for the hat functions φₖ through (0, t₁, …, t_K)/t_K."""
    p = _profile(sigma_rel_to_gamma(sigma_rel))
    nodes = np.array([0.0, *steps]) / steps[-1]
    weights = []
    for k in range(len(nodes)):
        hat = np.interp(_GRID, nodes, np.eye(len(nodes))[k])
        weights.append(_trapezoid(p * hat))
    return weights


@pytest.mark.parametrize("sigma_rel, gamma", [(0.05, 16.97), (0.10, 6.94)])
def test_sigma_rel_to_gamma_matches_values_quoted_in_edm2(sigma_rel, gamma):
    assert sigma_rel_to_gamma(sigma_rel) == pytest.approx(gamma, abs=0.005)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, 0.25])
def test_gamma_gives_profile_whose_relative_std_is_sigma_rel(sigma_rel):
    p = _profile(sigma_rel_to_gamma(sigma_rel))
    mass = _trapezoid(p)
    mean = _trapezoid(p * _GRID) / mass
    var = _trapezoid(p * (_GRID - mean) ** 2) / mass
    assert mass == pytest.approx(1.0, abs=1e-6)
    assert math.sqrt(var) == pytest.approx(sigma_rel, rel=1e-6)


@pytest.mark.parametrize("sigma_rel, steps", [
    (0.1, [100, 200, 300, 400, 500]),
    (0.05, [3, 5, 10, 11, 20, 40]),  # uneven spacing
    (0.2, [7]),
])
def test_coefficients_match_numerical_integration_of_profile(sigma_rel, steps):
    got = power_ema_coefficients(sigma_rel, steps)
    want = _numerical_weights(sigma_rel, steps)
    assert len(got) == len(steps) + 1
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.1, 0.3])
def test_coefficients_are_nonnegative_and_sum_to_one(sigma_rel):
    c = power_ema_coefficients(sigma_rel, [1, 2, 4, 8, 16, 17, 18, 1000])
    assert all(x >= 0.0 for x in c)
    assert math.fsum(c) == pytest.approx(1.0, abs=1e-15)


def test_linear_trajectory_average_equals_profile_mean():
    """θ(τ) = τ·v is reproduced exactly by the hats: Σ cₖtₖ = E[τ] = t(γ+1)/(γ+2)."""
    steps = [2.0, 3.0, 7.0, 8.0, 15.0]
    gamma = sigma_rel_to_gamma(0.15)
    c = power_ema_coefficients(0.15, steps)
    assert math.fsum(ck * t for ck, t in zip(c, [0.0, *steps], strict=True)) == pytest.approx(
        15.0 * (gamma + 1) / (gamma + 2), rel=1e-12)


def test_checkpoint_at_step_zero_takes_base_weight():
    c = power_ema_coefficients(0.1, [0, 5, 10])
    assert c[0] == 0.0
    np.testing.assert_allclose(c[1:], power_ema_coefficients(0.1, [5, 10]), rtol=1e-12)


def test_steps_come_from_checkpoint_names_or_none(tmp_path):
    assert steps_from_names([tmp_path / "checkpoint-40", tmp_path / "step-100"]) == [40, 100]
    assert steps_from_names([tmp_path / "checkpoint-40", tmp_path / "final"]) is None


@pytest.fixture
def trajectory(models, tmp_path):
    """A run folder with step-10 → ft2 and step-40 → ft (symlinked model folders)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "step-10").symlink_to(models["ft2"], target_is_directory=True)
    (run / "step-40").symlink_to(models["ft"], target_is_directory=True)
    return run


def test_merge_ema_sigma_rel_matches_float64_reference(models, trajectory, tmp_path):
    merge.ema(models["base"], [trajectory], tmp_path / "out", sigma_rel=0.1)
    c = _numerical_weights(0.1, [10, 40])
    states = [load_state(models[k]) for k in ("base", "ft2", "ft")]
    out = load_state(tmp_path / "out")
    for k in states[0]:
        ref = sum(ci * s[k].double() for ci, s in zip(c, states, strict=True))
        assert out[k].dtype == torch.float32
        torch.testing.assert_close(out[k].double(), ref, rtol=1e-6, atol=1e-6)


def test_recipe_and_card_record_sigma_rel_gamma_and_steps(models, trajectory, tmp_path):
    merge.ema(models["base"], [trajectory], tmp_path / "out", sigma_rel=0.1)
    recipe = json.loads((tmp_path / "out" / "safebasin_recipe.json").read_text())
    p = recipe["parameters"]
    assert recipe["method"] == "ema"
    assert p["sigma_rel"] == 0.1 and p["steps"] == [10.0, 40.0] and p["steps_from"] == "names"
    assert p["gamma"] == pytest.approx(6.94, abs=0.005)
    assert recipe["coefficients"] == pytest.approx(power_ema_coefficients(0.1, [10, 40]),
                                                   abs=1e-12)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "--sigma-rel 0.1" in card and "--eta" not in card


def test_cli_ema_sigma_rel_with_explicit_steps(models, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "ema", str(models["base"]), str(models["ft2"]),
                                 str(models["ft"]), "--sigma-rel", "0.2", "--steps", "1,4",
                                 "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    c = _numerical_weights(0.2, [1, 4])
    states = [load_state(models[k]) for k in ("base", "ft2", "ft")]
    got = load_state(out)
    for k in states[0]:
        ref = sum(ci * s[k].double() for ci, s in zip(c, states, strict=True))
        torch.testing.assert_close(got[k].double(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("args, needle", [
    (["--sigma-rel", "0"], "--sigma-rel must be in (0,"),
    (["--sigma-rel", "-0.1"], "--sigma-rel must be in (0,"),
    (["--sigma-rel", str(SIGMA_REL_MAX + 0.01)], "--sigma-rel must be in (0,"),
    (["--sigma-rel", "nan"], "--sigma-rel must be in (0,"),
    (["--sigma-rel", "0.1", "--eta", "0.5"], "exactly one of --eta or --sigma-rel"),
    ([], "exactly one of --eta or --sigma-rel"),
    (["--eta", "0.5", "--steps", "1"], "--steps is used only with --sigma-rel"),
    (["--sigma-rel", "0.1", "--steps", "1,2,3"], "3 steps for 1 checkpoints"),
    (["--sigma-rel", "0.1", "--steps", "-1"], "steps must be finite numbers >= 0"),
])
def test_cli_ema_refuses_bad_profile_parameters(models, tmp_path, args, needle):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["merge", "ema", str(models["base"]), str(models["ft"]),
                                 "-o", str(out), *args])
    assert r.exit_code == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
