"""SLERP per tensor against mergekit's formula in float64."""

from __future__ import annotations

import pytest
import torch
from reference_merges import assert_close, slerp_reference
from support import load_state

from safebasin import merge
from safebasin.merge import executor, stream
from safebasin.merge.geometry import slerp_coefficients


def test_slerp_matches_float64_reference(models, tmp_path):
    merge.slerp(models["base"], models["ft"], tmp_path / "out", t=0.3)
    a, b = load_state(models["base"]), load_state(models["ft"])
    assert_close(load_state(tmp_path / "out"), {k: slerp_reference(a[k], b[k], 0.3) for k in a},
                 rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t, source", [(0.0, "base"), (1.0, "ft")])
def test_slerp_endpoints_copy_inputs(models, tmp_path, t, source):
    merge.slerp(models["base"], models["ft"], tmp_path / "out", t=t)
    out, src = load_state(tmp_path / "out"), load_state(models[source])
    for k in src:
        torch.testing.assert_close(out[k], src[k], rtol=2e-7, atol=0)


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RowGram's statistics of rows of a and b (one row: one tensor)."""
    a, b = a.double(), b.double()
    return torch.stack([(a * a).sum(1), (b * b).sum(1), (a * b).sum(1)])


def test_slerp_falls_back_to_lerp_for_nearly_parallel_tensors():
    a = torch.randn(3, 1000, dtype=torch.float64)
    b = a * 1.5 + 1e-4 * torch.randn(3, 1000, dtype=torch.float64)
    b[2] = torch.randn(1000, dtype=torch.float64)  # this one is not parallel
    s0, s1, linear = slerp_coefficients(0.25, _gram(a, b))
    assert linear.tolist() == [True, True, False]
    assert s0[:2].tolist() == [0.75, 0.75] and s1[:2].tolist() == [0.25, 0.25]


def test_slerp_of_orthogonal_tensors_is_the_circular_arc():
    s0, s1, _ = slerp_coefficients(0.5, _gram(torch.eye(2)[:1], torch.eye(2)[1:]))
    assert float(s0) == pytest.approx(2**-0.5, rel=1e-6)
    assert float(s1) == pytest.approx(2**-0.5, rel=1e-6)


def test_slerp_is_independent_of_chunking(models, tmp_path, monkeypatch):
    merge.slerp(models["base"], models["ft"], tmp_path / "a", t=0.4)
    monkeypatch.setattr(executor, "CHUNK_ELEMS", 45)
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 45)
    merge.slerp(models["base"], models["ft"], tmp_path / "b", t=0.4)
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
