"""SLERP per tensor against mergekit's formula in float64."""

from __future__ import annotations

import pytest
import torch
from reference_merges import assert_close, slerp_reference
from safetensors.torch import save_file
from support import load_state

from safebasin import merge
from safebasin.checkpoint import open_checkpoint
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


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The clamped fp32 cosine of each row of a with the same row of b."""
    a, b = a.double(), b.double()
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(-1, 1).float()


def test_slerp_falls_back_to_lerp_for_nearly_parallel_tensors():
    a = torch.randn(3, 1000, dtype=torch.float64)
    b = a * 1.5 + 1e-4 * torch.randn(3, 1000, dtype=torch.float64)
    b[2] = torch.randn(1000, dtype=torch.float64)  # this one is not parallel
    s0, s1, linear = slerp_coefficients(0.25, _cos(a, b))
    assert linear.tolist() == [True, True, False]
    assert s0[:2].tolist() == [0.75, 0.75] and s1[:2].tolist() == [0.25, 0.25]


def _write_pair(tmp_path, v0: dict, v1: dict) -> None:
    """θ₀ and θ₁ as model folders tmp_path/a and tmp_path/b."""
    for name, state in (("a", v0), ("b", v1)):
        (tmp_path / name).mkdir()
        save_file(state, tmp_path / name / "model.safetensors")


def test_slerp_recipe_lists_the_tensors_interpolated_linearly_in_base_order(tmp_path):
    """The recipe names exactly the nearly parallel tensors (float64 cosine > 0.9995), in the
    order of θ₀'s tensors."""
    g = torch.Generator().manual_seed(3)
    names = ["z.weight", "a.weight", "m.weight", "b.weight"]  # not in sorted order
    v0 = {n: torch.randn(40, 30, generator=g) for n in names}
    v1 = {n: (1.5 * x + 1e-3 * torch.randn(x.shape, generator=g) if n in ("z.weight", "m.weight")
              else torch.randn(x.shape, generator=g)) for n, x in v0.items()}
    _write_pair(tmp_path, v0, v1)
    recipe = merge.slerp(tmp_path / "a", tmp_path / "b", tmp_path / "out", t=0.5)
    with open_checkpoint(tmp_path / "a") as base:
        order = list(base.names)
    parallel = [n for n in order
                if float(_cos(v0[n].reshape(1, -1), v1[n].reshape(1, -1))) > 0.9995]
    assert sorted(parallel) == ["m.weight", "z.weight"]
    assert recipe["parameters"]["lerped_tensors"] == parallel


def test_slerp_of_orthogonal_tensors_is_the_circular_arc():
    s0, s1, _ = slerp_coefficients(0.5, _cos(torch.eye(2)[:1], torch.eye(2)[1:]))
    assert float(s0) == pytest.approx(2**-0.5, rel=1e-6)
    assert float(s1) == pytest.approx(2**-0.5, rel=1e-6)


def test_slerp_is_independent_of_chunking(models, tmp_path, monkeypatch):
    merge.slerp(models["base"], models["ft"], tmp_path / "a", t=0.4)
    monkeypatch.setattr(executor, "CHUNK_ELEMS", 45)
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 45)
    merge.slerp(models["base"], models["ft"], tmp_path / "b", t=0.4)
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _mergekit_slerp(v0: torch.Tensor, v1: torch.Tensor, t: float) -> torch.Tensor:
    """mergekit 0.1.5's `slerp` for one fp32 tensor (output batch of one), transcribed from
    its published algorithm: norms and dots over blocks of 2²⁰ elements, fp32 throughout."""
    a, b = v0.reshape(1, -1).float(), v1.reshape(1, -1).float()
    tt = torch.tensor([t], dtype=torch.float32).reshape(-1, 1)
    size = 1024 * 1024
    blocks = range(0, a.shape[1], size)
    na = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(a[:, s:s + size], dim=1, keepdim=True) for s in blocks]), dim=0)
    nb = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(b[:, s:s + size], dim=1, keepdim=True) for s in blocks]), dim=0)
    na, nb = torch.where(na > 1e-8, na, 1), torch.where(nb > 1e-8, nb, 1)
    dot = torch.stack([((a[:, s:s + size] / na) * (b[:, s:s + size] / nb)).sum(dim=1, keepdim=True)
                       for s in blocks]).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > 0.9995
    theta = torch.acos(torch.where(linear, 0, dot))
    sin = torch.sin(theta)
    ca = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin)
    cb = torch.where(linear, tt, torch.sin(tt * theta) / sin)
    return (ca * a + cb * b).reshape(v0.shape)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk", [None, 300_001], ids=["aligned-chunks", "odd-chunks"])
def test_slerp_equals_mergekit_order_bit_for_bit(tmp_path, monkeypatch, chunk, threads):
    """A tensor of 2.6 blocks (and a small one), streamed in chunks aligned or not to
    mergekit's blocks: the fp32 bits of mergekit's algorithm run on the same torch threads
    (for this seed, 1 and 2 threads give different bits, and fp64 statistics others still)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"big.weight": (2600, 1049), "small.weight": (17, 5)}
    v0 = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    v1 = {k: x + 0.01 * torch.randn(x.shape, generator=g) for k, x in v0.items()}
    _write_pair(tmp_path, v0, v1)
    if chunk:
        monkeypatch.setattr(executor, "CHUNK_ELEMS", chunk)
        monkeypatch.setattr(stream, "CHUNK_ELEMS", chunk)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        merge.slerp(tmp_path / "a", tmp_path / "b", tmp_path / "out", t=0.35)
        want = {k: _mergekit_slerp(v0[k], v1[k], 0.35) for k in shapes}
        torch.set_num_threads(3 - threads)
        other = _mergekit_slerp(v0["big.weight"], v1["big.weight"], 0.35)
    finally:
        torch.set_num_threads(before)
    out = load_state(tmp_path / "out")
    for k in shapes:
        assert torch.equal(out[k].view(torch.int32), want[k].view(torch.int32)), k
    assert not torch.equal(other, want["big.weight"])  # the thread count matters here
    x, y = v0["big.weight"].double().flatten(), v1["big.weight"].double().flatten()
    s0, s1, _ = slerp_coefficients(0.35, (x @ y / (x.norm() * y.norm())).float())
    assert not torch.equal(s0 * v0["big.weight"] + s1 * v1["big.weight"], want["big.weight"])
