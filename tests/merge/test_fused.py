"""The fused loops store the same bits as the torch ops they replace (ties, signed zeros,
chunk boundaries, every sparse method), and their histograms equal torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safebasin.merge import fused
from safebasin.merge.geometry import ModelStockOp, SlerpOp, slerp_coefficients
from safebasin.merge.select import WindowMask, magnitude_bits, select_in_memory
from safebasin.merge.sparse import METHODS, SparseMergeOp, SparseParams, _windows


def _inputs(k: int, n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """θ₀ and k fine-tunes with many tied magnitudes, exact zeros and negative zeros."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g).to(dtype)
    base[::17] = -0.0
    out = [base]
    for _ in range(k):
        step = torch.round(torch.randn(n, generator=g) * 3) / 64  # few distinct magnitudes
        ft = (base.float() + step).to(dtype)
        ft[::5] = base[::5]  # untouched elements: τ = 0
        out.append(ft)
    return out


def _op(method: str, params: SparseParams, tensors: list[torch.Tensor],
        l1: list[float] | None) -> SparseMergeOp:
    m = METHODS[method]
    masks = []
    if m.sparsify in ("magnitude", "band"):
        base = tensors[0].float()
        for i, w in enumerate(_windows(m, params, tensors[0].numel())):
            bounds = None if (w.everything or w.empty) else tuple(
                select_in_memory(magnitude_bits(tensors[i + 1].float() - base), w.ranks()))
            masks.append(WindowMask(w, bounds))
    return SparseMergeOp("model.layers.0.w", m, params, masks, l1)


CASES = [  # method, weights, densities, gammas, lambda, normalize, rescale
    ("task-arithmetic", (0.7, 0.4), (1.0, 1.0), (), 0.9, True, "none"),
    ("ties", (0.7, 0.4), (0.3, 0.5), (), 1.1, True, "none"),
    ("ties", (0.7, -0.4, 0.2), (0.3, 0.5, 1.0), (), 1.0, False, "none"),
    ("ties", (1.0,), (0.2,), (), 1.0, True, "none"),
    ("ties", (-0.5,), (0.4,), (), 1.0, True, "none"),
    ("breadcrumbs", (0.7, 0.4), (0.6, 0.5), (0.05, 0.02), 1.0, False, "none"),
    ("breadcrumbs-ties", (0.7, 0.4), (0.6, 0.5), (0.05, 0.0), 1.0, True, "none"),
    ("dare-linear", (0.7, 0.4), (0.3, 1.0), (), 1.0, False, "density"),
    ("dare-ties", (0.7, 0.4), (0.3, 0.6), (), 0.8, True, "l1"),
    ("dare-linear", (1.0,), (0.5,), (), 1.0, False, "none"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{len(c[1])}" for c in CASES])
def test_fused_loop_stores_the_bits_of_the_torch_ops(case, dtype):
    method, weights, densities, gammas, lam, normalize, rescale = case
    params = SparseParams(weights=weights, densities=densities, gammas=gammas, lambda_=lam,
                          normalize=normalize, rescale=rescale,
                          seed=3 if METHODS[method].sparsify == "random" else None)
    n = 5003
    tensors = _inputs(len(weights), n, dtype, seed=len(weights))
    l1 = [1.25, 0.8][: len(weights)] if rescale == "l1" else None
    torch_op, fused_op = _op(method, params, tensors, l1), _op(method, params, tensors, l1)
    want = torch.empty(n, dtype=dtype)
    got = torch.empty(n, dtype=dtype)
    sq = 0.0
    for a, b in ((0, 1700), (1700, 1701), (1701, n)):  # ties running across chunks
        part = [t[a:b] for t in tensors]
        want[a:b].copy_(torch_op.apply(part, a, b))
        sq += fused_op.fill(part, a, b, got[a:b])
    assert torch.equal(want.view(torch.uint8), got.view(torch.uint8))  # signed zeros too
    ref = float(((want.float() - tensors[0].float()).double() ** 2).sum())  # fp32 difference
    assert sq == pytest.approx(ref, rel=1e-12)


def test_fused_loop_declines_float16_and_the_torch_path_serves_it():
    tensors = _inputs(1, 64, torch.float16, seed=0)
    params = SparseParams(weights=(1.0,), densities=(1.0,))
    op = _op("task-arithmetic", params, tensors, None)
    assert op.fill(tensors, 0, 64, torch.empty(64, dtype=torch.float16)) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_histograms_and_bits_equal_torch(dtype):
    base, ft = _inputs(1, 9001, dtype, seed=5)
    bits = magnitude_bits(ft.float() - base.float())
    got_bits = np.empty(9001, dtype=np.int32)
    fused.magnitude_bits_into(fused.as_array(base), fused.as_array(ft), got_bits)
    assert np.array_equal(got_bits, bits.numpy())
    high = np.zeros(1 << 15, dtype=np.int64)
    fused.high_histogram(fused.as_array(base), fused.as_array(ft), high)
    assert np.array_equal(high, torch.bincount(bits >> 16, minlength=1 << 15).numpy())
    values, counts = np.unique((bits >> 16).numpy(), return_counts=True)
    common = values[np.argsort(-counts, kind="stable")]  # the most frequent first
    rare = values[np.argmin(counts)]
    assert rare != common[0]
    # one bucket, a common and a rare one (the run-skipping loop), three (the general loop)
    for chosen in (common[:1], [common[0], rare], common[:3]):
        buckets = np.array(chosen, dtype=np.uint32)
        low = np.zeros((len(buckets), 1 << 16), dtype=np.int64)
        fused.low_histograms(fused.as_array(base), fused.as_array(ft), buckets, low)
        for j, b in enumerate(buckets):
            sel = bits[(bits >> 16) == int(b)] & 0xFFFF
            assert low[j].sum() > 0
            assert np.array_equal(low[j], torch.bincount(sel, minlength=1 << 16).numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_slerp_and_model_stock_loops_store_the_bits_of_the_torch_ops(dtype):
    tensors = _inputs(3, 5003, dtype, seed=9)
    s0, s1, _ = slerp_coefficients(0.3, torch.tensor(0.6))
    for op, inputs in ((SlerpOp(s0, s1), tensors[:2]), (ModelStockOp(0.37), tensors)):
        want = op.apply(inputs, 0, 5003).to(dtype)
        got = torch.empty(5003, dtype=dtype)
        sq = op.fill(inputs, 0, 5003, got)
        assert torch.equal(want.view(torch.uint8), got.view(torch.uint8))
        ref = float(((want.float() - inputs[0].float()).double() ** 2).sum())
        assert sq == pytest.approx(ref, rel=1e-12)
