"""torch's fp32 sum and norm replayed over chunks equal torch's own results, bit for bit."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safebasin.merge import fused, torch_order
from safebasin.merge.torch_order import ModelStockSums, Order, order


def _torch_sums(base: torch.Tensor, fts: list[torch.Tensor], threads: int):
    """What mergekit computes: fp32 offsets, `torch.norm(δ, dim=-1)`, `(δᵢ*δⱼ).sum(dim=-1)`."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        offsets = [f.float() - base.float() for f in fts]
        norms = [float(torch.norm(o, dim=-1)) for o in offsets]
        dots = [float((offsets[i] * offsets[j]).sum(dim=-1))
                for i in range(len(offsets)) for j in range(i + 1, len(offsets))]
    finally:
        torch.set_num_threads(old)
    return norms, dots


def _streamed(base: torch.Tensor, fts: list[torch.Tensor], threads: int, cuts: list[int]):
    sums = ModelStockSums(base.numel(), len(fts), threads, order(threads))
    edges = [0, *sorted(set(cuts)), base.numel()]
    for a, b in zip(edges, edges[1:], strict=False):
        if b > a:
            sums.update(fused.as_array(base[a:b]), fused.as_rows([f[a:b] for f in fts]), a)
    return [float(x) for x in sums.norms()], [float(x) for x in sums.dots()]


def _models(n: int, k: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, list]:
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 0.02).to(dtype)
    fts = [(base.float() + torch.randn(n, generator=g) * 0.01 * (i + 1)).to(dtype)
           for i in range(k)]
    return base, fts


def test_this_torch_has_a_recognised_order():
    """Without it model stock cannot equal mergekit; on x86-64 torch 2.13: 8 lanes."""
    got = order(torch.get_num_threads())
    assert isinstance(got, Order)
    assert got.width in (4, 8, 16, 32) and got.tail in torch_order.TAILS


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 120_000), k=st.integers(2, 4),
       dtype=st.sampled_from([torch.bfloat16, torch.float32, torch.float16]),
       threads=st.integers(1, 3), seed=st.integers(0, 2**31),
       cuts=st.lists(st.integers(0, 120_000), max_size=6))
def test_streamed_norms_and_dots_equal_torch(n, k, dtype, threads, seed, cuts):
    base, fts = _models(n, k, dtype, seed)
    if dtype == torch.float16:  # what the statistic does for inputs the loops decline
        base, fts = base.float(), [f.float() for f in fts]
    cuts = [c for c in cuts if c < n]
    assert _streamed(base, fts, threads, cuts) == _torch_sums(base, fts, threads)


@pytest.mark.parametrize(("n", "threads"), [
    (32_768, 2), (32_769, 2), (65_537, 3), (3_000_017, 2),
    (40_000_003, 1),  # a range past 2²⁴·2 elements: a fifth level of the cascade
    (70_000_001, 2)])
def test_large_tensors_equal_torch(n, threads):
    base, fts = _models(n, 2, torch.bfloat16, seed=n)
    cuts = list(range(1 << 20, n, (1 << 20) + 4097))
    assert _streamed(base, fts, threads, cuts) == _torch_sums(base, fts, threads)


def _exact_f32(x: Fraction) -> np.float32:
    """x rounded once to fp32, nearest even (by comparing neighbours exactly)."""
    guess = np.float32(float(x))
    near = [guess, np.nextafter(guess, np.float32(np.inf)),
            np.nextafter(guess, np.float32(-np.inf))]
    return min(near, key=lambda c: (abs(Fraction(float(c)) - x),
                                    int(c.view(np.uint32)) & 1))


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False,
                     min_value=-2.0**60, max_value=2.0**60)


@settings(max_examples=300, deadline=None)
@given(a=finite32, b=finite32, c=finite32)
def test_fma32_rounds_once(a, b, c):
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    want = _exact_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))
    got = torch_order._fma32(a, b, c)
    assert got == want or (got == 0 and want == 0)


def test_fma32_breaks_an_fp64_tie_the_right_way():
    """(1 + 2⁻¹⁸)(2⁻²⁴ − 2⁻⁴²) + 1 + 2⁻²³ = 1 + 2⁻²³ + 2⁻²⁴ − 2⁻⁶⁰: rounded to fp64 first it
    is the fp32 midpoint, which ties to even upwards; rounded once it goes down."""
    a, b, c = np.float32(1 + 2**-18), np.float32(2**-24 - 2**-42), np.float32(1 + 2**-23)
    assert torch_order._fma32(a, b, c) == np.float32(1 + 2**-23)
    assert np.float32(float(a) * float(b) + float(c)) == np.float32(1 + 2**-22)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6, 7, 8, 9, 15, 36, 45])
def test_small_sums_are_torchs_mean_of_cosines(count):
    x = np.random.default_rng(count).uniform(-1, 1, count).astype(np.float32)
    width = order(torch.get_num_threads()).width
    got = np.float32(torch_order.small_sum(x, width) / np.float32(count))
    assert float(got) == float(torch.from_numpy(x).mean(dim=0))
