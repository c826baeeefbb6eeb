"""The EMA-split merges of a sweep (`sweep.merges`) against float64 references on a tiny run."""

from __future__ import annotations

import shutil

import pytest
import torch
from support import load_state, make_model

from safebasin import merge
from safebasin.sweep.config import EmaSpec
from safebasin.sweep.merges import (
    MergeContext,
    anchor_lerp,
    l2_per_tensor,
    path_average,
    path_average_lerp,
)

ETA, K = 0.25, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """θ₀, a 4-step trajectory (the last step is the run's final weights) and its EMA."""
    root = tmp_path_factory.mktemp("run")
    base = make_model(root / "theta0", seed=0)
    run_dir = root / "run"
    steps = []
    for k in range(1, K + 1):
        steps.append(make_model(run_dir / "trajectory" / f"step-{k:06d}", seed=10 + k,
                                like=base, noise=0.05 * k))
    for f in steps[-1].iterdir():
        shutil.copy(f, run_dir / f.name)
    ema = EmaSpec(ETA, 1)
    merge.ema(base, steps, run_dir / ema.tag, eta=ETA)
    return base, run_dir, steps, ema


def _reference(base, steps):
    """float64 θ₀, θ₁..θ_K per tensor, and c₀, cₖ of the EMA, computed here."""
    theta0 = {n: t.double() for n, t in load_state(base).items()}
    thetas = [{n: t.double() for n, t in load_state(s).items()} for s in steps]
    c = [(1 - ETA) ** K] + [ETA * (1 - ETA) ** (K - k) for k in range(1, K + 1)]
    return theta0, thetas, c


def _close(out, expected: dict, atol: float) -> None:
    got = load_state(out)
    assert set(got) == set(expected)
    for name, ref in expected.items():
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name].double(), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("trajectory_every", [1, None])
def test_path_average_is_the_normalised_trajectory_average(run, tmp_path, trajectory_every):
    base, run_dir, steps, ema = run
    theta0, thetas, c = _reference(base, steps)
    ctx = MergeContext(base, run_dir, ema, K, trajectory_every)
    extra = path_average(ctx, tmp_path / "out")
    assert extra["built_from"] == ("trajectory" if trajectory_every else "ema")
    assert extra["c0"] == pytest.approx(c[0], rel=1e-12)
    expected = {n: sum(c[k] * thetas[k - 1][n] for k in range(1, K + 1)) / (1 - c[0])
                for n in theta0}
    _close(tmp_path / "out", expected, atol=1e-5 if trajectory_every else 5e-5)


def test_anchor_lerp_puts_the_ema_anchor_weight_on_the_final_weights(run, tmp_path):
    base, run_dir, steps, ema = run
    theta0, thetas, c = _reference(base, steps)
    anchor_lerp(MergeContext(base, run_dir, ema, K, 1), tmp_path / "out")
    expected = {n: c[0] * theta0[n] + (1 - c[0]) * thetas[-1][n] for n in theta0}
    _close(tmp_path / "out", expected, atol=1e-6)


def test_path_average_lerp_at_the_ema_distance_is_the_ema(run, tmp_path):
    base, run_dir, steps, ema = run
    theta0, thetas, c = _reference(base, steps)
    ctx = MergeContext(base, run_dir, ema, K, 1)
    path_average(ctx, tmp_path / "path")
    d = merge.distance(base, run_dir / ema.tag).global_l2
    extra = path_average_lerp(ctx, tmp_path / "out", tmp_path / "path", d)
    assert extra["scale"] == pytest.approx(1 - c[0], rel=1e-5)
    assert extra["ema_max_abs_diff"] < 1e-5
    expected = {n: c[0] * theta0[n] + sum(c[k] * thetas[k - 1][n] for k in range(1, K + 1))
                for n in theta0}
    _close(tmp_path / "out", expected, atol=1e-5)


def test_per_tensor_radius_scale_multiplies_the_ema_radii(run, tmp_path):
    base, run_dir, steps, ema = run
    theta0 = {n: t.double() for n, t in load_state(base).items()}
    final = {n: t.double() for n, t in load_state(run_dir).items()}
    ema_w = {n: t.double() for n, t in load_state(run_dir / ema.tag).items()}
    l2_per_tensor(MergeContext(base, run_dir, ema, K, 1), tmp_path / "out", radius_scale=0.5)
    expected = {}
    for n in theta0:
        delta = final[n] - theta0[n]
        r = 0.5 * (ema_w[n] - theta0[n]).norm()
        norm = delta.norm()
        expected[n] = theta0[n] + (delta if norm <= r or norm == 0 else delta * (r / norm))
    _close(tmp_path / "out", expected, atol=1e-6)
