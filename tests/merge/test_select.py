"""Exact magnitude selection: radix over chunks equals kthvalue and a stable sort."""

from __future__ import annotations

import pytest
import torch

from safebasin.merge.select import (
    RankWindow,
    WindowMask,
    WindowSelect,
    magnitude_bits,
    select_in_memory,
)


def _adversarial(n: int, seed: int) -> torch.Tensor:
    """Many ties, ±0, subnormals, huge and infinite magnitudes."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, 3e-39, 1.0, -1.0, 0.5, 2.0,
                         -2.0, 3.4e38, -3.4e38, float("inf"), -float("inf")])
    x = pool[torch.randint(len(pool), (n,), generator=g)]
    noise = torch.randn(n, generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.3, noise, x)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"random": torch.randn(5003, generator=g), "adversarial": _adversarial(4099, 1),
            "all_equal": torch.full((1000,), -0.25), "zeros": torch.zeros(777)}


def _by_chunks(x: torch.Tensor, windows, chunk: int, budget: int):
    """WindowSelect fed like the statistics pass: base 0, input 1 = x, in chunks."""
    stat = WindowSelect(windows, budget=budget)
    base = torch.zeros_like(x)
    while True:
        for s in range(0, x.numel(), chunk):
            stat.update([base[s:s + chunk], x[s:s + chunk]], s, min(s + chunk, x.numel()))
        if not stat.end_pass():
            return stat.result()


@pytest.mark.parametrize("name", list(_tensors()))
def test_in_memory_selection_equals_kthvalue(name):
    x = _tensors()[name]
    bits = magnitude_bits(x)
    ranks = [0, 1, x.numel() // 3, x.numel() - 1]
    for r, b in zip(ranks, select_in_memory(bits, ranks), strict=True):
        expected = torch.kthvalue(x.abs(), r + 1).values
        assert torch.tensor(b.bits, dtype=torch.int32).view(torch.float32) == expected
        assert b.less == int((x.abs() < expected).sum())


@pytest.mark.parametrize("name", list(_tensors()))
@pytest.mark.parametrize("chunk", [97, 1000, 100_000])
def test_radix_selection_over_chunks_equals_in_memory(name, chunk):
    x = _tensors()[name]
    n = x.numel()
    windows = [RankWindow(n, n // 4, n - n // 10)]
    radix = _by_chunks(x, windows, chunk, budget=0)
    memory = _by_chunks(x, windows, chunk, budget=1 << 30)
    assert radix == memory
    lo, hi = radix[0]
    assert torch.tensor(hi.bits, dtype=torch.int32).view(torch.float32) == torch.topk(
        x.abs(), n // 10 + 1).values[-1]
    assert lo.bits == int(torch.kthvalue(magnitude_bits(x), n // 4 + 1).values)


@pytest.mark.parametrize("name", list(_tensors()))
def test_window_mask_over_chunks_equals_stable_sort_ranks(name):
    x = _tensors()[name]
    n = x.numel()
    window = RankWindow(n, n // 3, n - n // 7)
    bounds = _by_chunks(x, [window], 64, budget=0)[0]
    mask_fn = WindowMask(window, bounds)
    mask = torch.cat([mask_fn(magnitude_bits(x[s:s + 64])) for s in range(0, n, 64)])
    order = torch.sort(x.abs(), stable=True).indices  # ties by index, ascending
    expected = torch.zeros(n, dtype=torch.bool)
    expected[order[window.lo:window.hi]] = True
    assert torch.equal(mask, expected)
    assert int(mask.sum()) == window.hi - window.lo


def test_top_k_window_follows_mergekit_counts():
    assert RankWindow.top_k(10, 0.35) == RankWindow(10, 7, 10)  # k = int(3.5) = 3
    assert RankWindow.top_k(10, 0.01) == RankWindow(10, 9, 10)  # at least one element
    assert RankWindow.top_k(10, 1.0).everything


def test_band_window_keeps_the_smallest_when_gamma_exceeds_what_density_allows():
    assert RankWindow.band(100, 0.9, 0.01) == RankWindow(100, 9, 99)
    assert RankWindow.band(100, 0.9, 0.3) == RankWindow(100, 0, 90)
    assert RankWindow.band(50, 0.5, 0.01) == RankWindow(50, 25, 50)  # int(γn) = 0
