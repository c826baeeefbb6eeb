"""Exact magnitude ranks in bounded memory: which elements a top-k (TIES) or a band
(breadcrumbs) keeps.

Order: elements are ranked by |x| ascending, ties broken by index (the earlier element ranks
lower), so every rank names exactly one element and a window [lo, hi) of ranks keeps exactly
hi − lo of them. A magnitude is compared through its fp32 bit pattern: for |x| the int32 bits
are ordered like the values (+0 and −0 are both 0; subnormals sort below normals; NaN above
Inf, as torch's sort puts it).

Two ways to find the boundary values, with the same answer:
  * in memory, for tensors within the budget: `torch.kthvalue` on the gathered bits;
  * radix selection over chunks, for larger ones: pass 1 counts the high 15 bits of every
    pattern (32768 bins), pass 2 the low 16 bits inside the bucket that holds the wanted rank
    (65536 bins). Two passes, exact, memory independent of the tensor's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import fused
from .ops import TensorStatistic

__all__ = ["Boundary", "RankWindow", "WindowSelect", "magnitude_bits", "select_in_memory",
           "window_mask"]

# gathered bytes (int32 bits of every input's task vector) below which a tensor is selected
# in memory; larger tensors take the two-pass radix selection
STATS_BUDGET = 32 * 2**20
_HIGH_BINS = 1 << 15  # bits 16..30 (bit 31, the sign, is 0 for |x|)
_LOW_BINS = 1 << 16


def magnitude_bits(x: torch.Tensor) -> torch.Tensor:
    """The int32 bit patterns of |x| (fp32), ordered like the magnitudes."""
    return x.float().abs().view(torch.int32)


@dataclass(frozen=True)
class RankWindow:
    """Keep ascending ranks [lo, hi) of n elements (lo ≥ hi: keep nothing)."""

    n: int
    lo: int
    hi: int

    @classmethod
    def top_k(cls, n: int, density: float) -> RankWindow:
        """mergekit's `magnitude`: the k = max(1, int(density·n)) largest; density ≥ 1 keeps
        all."""
        k = n if density >= 1 else min(n, max(1, int(density * n)))
        return cls(n, n - k, n)

    @classmethod
    def band(cls, n: int, density: float, gamma: float) -> RankWindow:
        """mergekit's `magnitude_outliers` (breadcrumbs): keep int(density·n) elements from
        rank max(0, n − int(density·n) − int(gamma·n)) up, which drops the int(gamma·n)
        largest when the density allows it; density ≥ 1 keeps all."""
        if density >= 1:
            return cls(n, 0, n)
        keep = int(density * n)
        lo = max(0, n - keep - int(gamma * n))
        return cls(n, lo, lo + keep)

    @property
    def everything(self) -> bool:
        return self.lo <= 0 and self.hi >= self.n

    @property
    def empty(self) -> bool:
        return self.lo >= self.hi

    def ranks(self) -> tuple[int, int]:
        """The two boundary ranks whose values the selection needs."""
        return self.lo, self.hi - 1


@dataclass(frozen=True)
class Boundary:
    """The element at one rank: its magnitude bits, how many elements are strictly smaller,
    and how many share its bits (its ties, itself included)."""

    bits: int
    less: int
    count: int = 1


def select_in_memory(bits: torch.Tensor, ranks: Sequence[int]) -> list[Boundary]:
    """Boundaries of `ranks` (0-based, ascending) in a flat int32 tensor held in memory: the
    same two radix steps as the streamed selection, without reading the data twice."""
    radix = _Radix(ranks)
    for _ in range(2):
        radix.update(bits)
        radix.end_tensor()
    return radix.result  # type: ignore[return-value]


class _Radix:
    """Two-pass radix selection of several ranks over the chunks of one bit stream.

    Histograms live only while their tensor is being read: `end_tensor` condenses them."""

    def __init__(self, ranks: Sequence[int]) -> None:
        self.ranks = list(ranks)
        self.pass_ = 0
        self.high: torch.Tensor | None = None
        self.buckets: list[tuple[int, int]] = []  # (high bucket, elements below it)
        self.low: dict[int, torch.Tensor] = {}
        self._low_rows = torch.zeros(0, _LOW_BINS, dtype=torch.int64)
        self._low_keys = np.zeros(0, dtype=np.uint32)
        self.result: list[Boundary] | None = None

    def _histograms(self) -> None:
        if self.pass_ == 0 and self.high is None:
            self.high = torch.zeros(_HIGH_BINS, dtype=torch.int64)
        if self.pass_ == 1 and not self.low:
            keys = list(dict.fromkeys(b for b, _ in self.buckets))  # two ranks may share one
            self._low_rows = torch.zeros(len(keys), _LOW_BINS, dtype=torch.int64)
            self._low_keys = np.array(keys, dtype=np.uint32)
            self.low = {b: self._low_rows[j] for j, b in enumerate(keys)}

    def update_pair(self, base: torch.Tensor, ft: torch.Tensor) -> None:
        """`update` with the bits of |ft − base| computed inside the fused loop."""
        self._histograms()
        a, b = fused.as_array(base), fused.as_array(ft)
        if self.pass_ == 0:
            fused.high_histogram(a, b, self.high.numpy())  # type: ignore[union-attr]
        else:
            fused.low_histograms(a, b, self._low_keys, self._low_rows.numpy())

    def update(self, bits: torch.Tensor) -> None:
        """Count a chunk of gathered magnitude bits (flat int32, as `magnitude_bits` makes)."""
        self._histograms()
        b = bits.contiguous().numpy()
        if self.pass_ == 0:
            fused.bits_high_histogram(b, self.high.numpy())  # type: ignore[union-attr]
        else:
            fused.bits_low_histograms(b, self._low_keys, self._low_rows.numpy())

    def end_tensor(self) -> None:
        """The tensor's last chunk of this pass has been seen."""
        if self.pass_ == 0:
            cum = torch.cumsum(self.high, 0)  # type: ignore[arg-type]
            for r in self.ranks:
                b = int(torch.searchsorted(cum, r, right=True))
                self.buckets.append((b, int(cum[b - 1]) if b else 0))
            self.high, self.pass_ = None, 1
            return
        out = []
        for r, (b, below) in zip(self.ranks, self.buckets, strict=True):
            cum = torch.cumsum(self.low[b], 0)
            low = int(torch.searchsorted(cum, r - below, right=True))
            less = below + (int(cum[low - 1]) if low else 0)
            out.append(Boundary((b << 16) | low, less, int(self.low[b][low])))
        # the histograms go: a statistic is kept until the merge, for every tensor of a model
        # (an 8B's 226 large tensors held 0.5-1 MiB each, 554 MiB peak)
        self.low, self.result = {}, out
        self._low_rows = torch.zeros(0, _LOW_BINS, dtype=torch.int64)  # not a view: freed


class WindowSelect(TensorStatistic):
    """The boundaries of a rank window in each input's task vector |θᵢ − θ₀| (fp32).

    In memory when the gathered bits fit `budget` bytes, else by two-pass radix selection.
    Storage is allocated when the tensor's first chunk arrives and condensed after its last,
    so a pass over a whole model holds one tensor's worth at a time. `result()[i]` is
    (lower, upper) `Boundary` for input i + 1, or None where the window keeps everything or
    nothing.
    """

    def __init__(self, windows: Sequence[RankWindow], *, budget: int = STATS_BUDGET) -> None:
        self.windows = list(windows)
        self._active = [i for i, w in enumerate(self.windows)
                        if not (w.everything or w.empty)]
        self._n = self.windows[0].n if self.windows else 0
        self._memory = len(self._active) * self._n * 4 <= budget
        self._bits: dict[int, torch.Tensor] = {}
        self._radix = {} if self._memory else {
            i: _Radix(self.windows[i].ranks()) for i in self._active}
        self._done: list[tuple[Boundary, Boundary] | None] = [None] * len(self.windows)

    def update(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> None:
        if self._memory:
            for i in self._active:
                if i not in self._bits:
                    self._bits[i] = torch.empty(self._n, dtype=torch.int32)
        if fused.supported(tensors):  # one loop per input, no temporaries
            for i in self._active:
                if self._memory:
                    fused.magnitude_bits_into(fused.as_array(tensors[0]),
                                              fused.as_array(tensors[i + 1]),
                                              self._bits[i][start:stop].numpy())
                else:
                    self._radix[i].update_pair(tensors[0], tensors[i + 1])
        else:
            base = tensors[0].float()
            for i in self._active:
                bits = magnitude_bits(tensors[i + 1].float() - base)
                if self._memory:
                    self._bits[i][start:stop] = bits
                else:
                    self._radix[i].update(bits)
        if stop == self._n:
            self._end_tensor()

    def _end_tensor(self) -> None:
        for i, bits in self._bits.items():
            lo, hi = select_in_memory(bits, self.windows[i].ranks())
            self._done[i] = (lo, hi)
        self._bits.clear()
        for i, r in self._radix.items():
            r.end_tensor()
            if r.result is not None:
                self._done[i] = (r.result[0], r.result[1])

    @property
    def passes(self) -> int:
        """Passes over the tensor this selection needs: one in memory, two by radix."""
        return 1 if self._memory else 2

    def end_pass(self) -> bool:
        return any(r.result is None for r in self._radix.values())

    def result(self) -> list[tuple[Boundary, Boundary] | None]:
        if self.end_pass():
            raise RuntimeError("selection read before its passes finished")
        return self._done


class WindowMask:
    """The keep-mask of one rank window over a tensor's chunks, taken in order.

    Elements strictly between the boundary values are kept. The ties of a boundary value are
    all kept or all dropped when their ranks fall wholly inside or outside the window (one
    comparison); otherwise each is kept by its tie position (a running count across chunks),
    so exactly hi − lo elements are kept.
    """

    def __init__(self, window: RankWindow, bounds: tuple[Boundary, Boundary] | None) -> None:
        self.window, self.bounds = window, bounds
        self._seen_lo = self._seen_hi = 0

    def _split(self, b: Boundary) -> bool:
        """Some but not all ties of b are in the window."""
        first, end = b.less, b.less + b.count
        inside = self.window.lo <= first and end <= self.window.hi
        outside = end <= self.window.lo or first >= self.window.hi
        return not (inside or outside)

    def decision(self) -> tuple[str, list[int]]:
        """What `__call__` decides, as data for the fused loop (`fused._kept_by_rank`):
        ("all" | "none", []) or ("rank", [lo bits, lo strict, has upper, hi bits, hi strict,
        split lo, split hi, lo.less, hi.less, window lo, window hi])."""
        w = self.window
        if w.everything:
            return "all", []
        if w.empty or self.bounds is None:
            return "none", []
        lo, hi = self.bounds
        split_lo, split_hi = self._split(lo), hi.bits != lo.bits and self._split(hi)
        lo_strict = split_lo or lo.less < w.lo
        has_hi = hi.less + hi.count < w.n or hi.less + hi.count > w.hi
        hi_strict = split_hi or hi.less + hi.count > w.hi
        return "rank", [lo.bits, int(lo_strict), int(has_hi), hi.bits, int(hi_strict),
                        int(split_lo), int(split_hi), lo.less, hi.less, w.lo, w.hi]

    def __call__(self, bits: torch.Tensor) -> torch.Tensor | None:
        """Bool mask for this chunk's magnitude bits; None: keep everything."""
        w = self.window
        if w.everything:
            return None
        if w.empty or self.bounds is None:
            return torch.zeros(bits.shape, dtype=torch.bool)
        lo, hi = self.bounds
        split_lo, split_hi = self._split(lo), hi.bits != lo.bits and self._split(hi)
        # ties wholly inside are kept by the comparison itself (≥, ≤)
        keep = bits >= lo.bits if not split_lo and lo.less >= w.lo else bits > lo.bits
        if hi.less + hi.count < w.n or hi.less + hi.count > w.hi:  # something above to drop
            keep &= (bits <= hi.bits if not split_hi and hi.less + hi.count <= w.hi
                     else bits < hi.bits)
        if split_lo:
            self._seen_lo = _ties(keep, bits, lo, self._seen_lo, w.lo, w.hi)
        if split_hi:
            self._seen_hi = _ties(keep, bits, hi, self._seen_hi, w.lo, w.hi)
        return keep


def _ties(keep: torch.Tensor, bits: torch.Tensor, b: Boundary, seen: int, lo: int,
          hi: int) -> int:
    """Mark the elements equal to b whose rank (b.less + tie position) is in [lo, hi)."""
    where = torch.nonzero(bits == b.bits).view(-1)
    if where.numel():
        rank = b.less + seen + torch.arange(where.numel())
        keep[where] = (rank >= lo) & (rank < hi)
    return seen + where.numel()


def window_mask(window: RankWindow, bounds: tuple[Boundary, Boundary] | None) -> WindowMask:
    return WindowMask(window, bounds)
