"""DARE: a seeded, chunk-independent drop mask; unbiased; float64 references."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import xxhash
from reference_merges import assert_close, f64, sparse_reference
from support import load_state

from safebasin import merge
from safebasin.merge import executor, stream
from safebasin.merge.dropout import keep_mask, keep_threshold
from safebasin.merge.sparse import METHODS, SparseMergeOp, SparseParams

_MASK32 = 0xFFFFFFFF


def _lowbias32(x: int) -> int:
    """Wellons' lowbias32 in Python integers (an independent reference of the numpy code)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _reference_mask(seed: int, name: str, n: int, density: float) -> torch.Tensor:
    key = xxhash.xxh3_64_intdigest(f"{seed}\0{name}".encode())
    k1, k2 = key & _MASK32, key >> 32
    threshold = round(density * 2**32)
    keep = [_lowbias32(_lowbias32(j ^ k1) ^ k2) < threshold for j in range(n)]
    return torch.tensor(keep)


def _fts(models):
    return [models["ft"], models["ft2"]]


@pytest.mark.parametrize("method", ["dare-linear", "dare-ties"])
def test_dare_matches_float64_reference(models, tmp_path, method):
    merge.sparse_merge(method, models["base"], _fts(models), tmp_path / "out", density=0.6,
                       weights=[0.7, 0.5], seed=11, lambda_=0.9)
    base = load_state(models["base"])
    fts = [load_state(p) for p in _fts(models)]
    masks = [{k: _reference_mask(11, k, v.numel(), 0.6).reshape(v.shape)
              for k, v in base.items()} for _ in fts]
    ref = sparse_reference(f64(base), [f64(f) for f in fts], masks=masks, weights=[0.7, 0.5],
                           lam=0.9, normalize=False, consensus=method == "dare-ties",
                           scale=[1 / 0.6, 1 / 0.6])
    assert_close(load_state(tmp_path / "out"), ref)


def test_dare_is_bit_reproducible_and_independent_of_chunk_size(models, tmp_path,
                                                                monkeypatch):
    kw = dict(density=0.5, seed=3)
    merge.dare_linear(models["base"], _fts(models), tmp_path / "a", **kw)
    merge.dare_linear(models["base"], _fts(models), tmp_path / "b", **kw)
    monkeypatch.setattr(executor, "CHUNK_ELEMS", 77)
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 77)
    merge.dare_linear(models["base"], _fts(models), tmp_path / "c", **kw)
    shards = [(tmp_path / d / "model.safetensors").read_bytes() for d in "abc"]
    assert shards[0] == shards[1] == shards[2]


def test_dare_different_seeds_drop_different_elements(models, tmp_path):
    merge.dare_linear(models["base"], _fts(models), tmp_path / "a", density=0.5, seed=1)
    merge.dare_linear(models["base"], _fts(models), tmp_path / "b", density=0.5, seed=2)
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"],
                           b["model.layers.0.mlp.up_proj.weight"])


def test_keep_mask_is_the_same_for_any_split_of_the_range():
    whole = keep_mask(5, "w", 0, 10_000, 0.3)
    parts = torch.cat([keep_mask(5, "w", s, min(s + 333, 10_000), 0.3)
                       for s in range(0, 10_000, 333)])
    assert torch.equal(whole, parts)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_keep_fraction_is_the_density_within_five_sigma(density):
    n = 200_000
    kept = float(keep_mask(0, "t", 0, n, density).double().mean())
    assert abs(kept - density) <= 5 * math.sqrt(density * (1 - density) / n)


def test_keep_probability_is_the_density_exactly_up_to_two_to_the_minus_33():
    """The expectation argument: P(keep) = threshold/2³² for a uniform 32-bit hash, so
    E[bᵢ/p] = threshold/(2³²·p) = 1 within 2⁻³³/p."""
    for p in (1e-3, 0.1, 1 / 3, 0.5, 0.999999):
        assert abs(keep_threshold(p) / 2**32 - p) <= 2**-33


def test_dare_average_over_seeds_equals_the_undropped_merge():
    """Mean over S seeds of θ₀ + Σ wᵢ·bᵢ⊙τᵢ/p approaches θ₀ + Σ wᵢτᵢ: each element within
    6 standard errors, σ = sqrt(Σ wᵢ²τᵢ²(1−p)/p)/sqrt(S)."""
    g = torch.Generator().manual_seed(0)
    base, t1, t2 = (torch.randn(4000, generator=g) for _ in range(3))
    w, p, seeds = (0.6, 0.8), 0.4, 256
    params = SparseParams(weights=w, densities=(p, p), rescale="density", seed=0)
    total = torch.zeros(4000, dtype=torch.float64)
    for s in range(seeds):
        op = SparseMergeOp("x", METHODS["dare-linear"], replace(params, seed=s), [])
        total += op.apply([base, t1, t2], 0, 4000).double()
    mean = total / seeds
    tau = [t1.double() - base.double(), t2.double() - base.double()]
    undropped = base.double() + w[0] * tau[0] + w[1] * tau[1]
    sigma = ((w[0] ** 2 * tau[0] ** 2 + w[1] ** 2 * tau[1] ** 2) * (1 - p) / p).sqrt()
    assert bool(((mean - undropped).abs() <= 6 * sigma / math.sqrt(seeds) + 1e-6).all())


def test_dare_l1_rescale_keeps_each_tensors_l1_norm(models, tmp_path):
    """mergekit's rescale: true: ‖b⊙τ‖₁ scaled back to ‖τ‖₁, per tensor."""
    merge.dare_linear(models["base"], [models["ft"]], tmp_path / "out", density=0.3, seed=4,
                      rescale="l1")
    base, ft, out = (f64(load_state(p)) for p in (models["base"], models["ft"],
                                                  tmp_path / "out"))
    for k in base:
        if base[k].numel() >= 1000:  # the drop rate itself, where it is measurable
            assert 0.25 < float((out[k] != base[k]).double().mean()) < 0.35, k
        assert float((out[k] - base[k]).abs().sum()) == pytest.approx(
            float((ft[k] - base[k]).abs().sum()), rel=1e-5), k


def _lowbias32(x: int) -> int:
    """Wellons' lowbias32 in Python integers, from its published constants."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_keep_mask_is_the_documented_hash_of_seed_name_and_index():
    import xxhash

    key = xxhash.xxh3_64_intdigest(b"7\0layer.w")
    k1, k2 = key & 0xFFFFFFFF, key >> 32
    threshold = keep_threshold(0.4)
    start = (1 << 32) - 5  # the index's high word enters the second round
    want = [_lowbias32(_lowbias32((j & 0xFFFFFFFF) ^ k1) ^ ((j >> 32) ^ k2)) < threshold
            for j in range(start, start + 10)]
    assert keep_mask(7, "layer.w", start, start + 10, 0.4).tolist() == want
