"""torch's CPU float32 sum and 2-norm of a 1-D tensor, reproduced bit for bit over chunks.

mergekit's model stock reduces whole tensors at once, `(a * b).sum(dim=-1)` and
`torch.norm(a, dim=-1)` in fp32, and those roundings decide t and so the merge's last bits
(fp64 sums left fp32 outputs up to 2 ulps away). ATen's order, which this module replays on
chunks that arrive in order, with memory independent of the tensor's size:

* sum (`cascade_sum`, SumKernel.cpp): with T intra-op threads and n ≥ 32768 elements, n is
  cut into ranges of ⌈n/C⌉ elements, C = min(T, ⌈n/32768⌉) (one range when n = 32768), each
  summed into its thread's slot, and the T slots are summed by the same routine. A range of
  s ≥ L elements (L: the kernel's vector lanes) is read as s//L vectors in groups of four
  (ILP); the groups go into a four-level cascade of accumulators, flushed level by level
  after every 2^p groups (p = max(4, ⌈log₂ groups⌉ // 4)); then the levels, the leftover
  vectors, the four ILP accumulators, the leftover scalars and the L lanes are added in that
  order. A range shorter than L is summed as scalars in groups of four the same way.
* norm (the last-dimension fast path, ReduceOpsKernel.cpp): one running vector of L lanes of
  squares over the whole vectors, its lanes added in order, then the remaining elements'
  squares one by one (how the compiler built that loop decides which are fused multiply-adds:
  `TAILS`), then the square root.

L and the tail rule depend on how this torch was built (measured for the torch 2.13 x86-64
wheel on an AVX512 machine: L = 8, the "unrolled" tail): `order()` finds them by matching
torch's own results on probe vectors, and is None when no candidate matches.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
from numba import njit

from .fused import _delta, _widen
from .stream import torch_threads

__all__ = ["ModelStockSums", "Order", "order", "small_sum"]

GRAIN = 32768  # at::internal::GRAIN_SIZE
_ILP = 4  # cascade_sum's ilp_factor
_LEVELS = 4  # multi_row_sum's num_levels
_F32 = np.float32


def _ceil_log2(x: int) -> int:
    return 1 if x <= 2 else int(x - 1).bit_length()


def _level_power(groups: int) -> int:
    return max(4, _ceil_log2(groups) // _LEVELS)


def _ranges(n: int, threads: int) -> tuple[list[tuple[int, int]], bool]:
    """The ranges that torch sums separately, and whether their slots are summed after."""
    if n < GRAIN or threads == 1:
        return [(0, n)], False
    count = min(threads, -(-n // GRAIN)) if n > GRAIN else 1
    size = -(-n // count)
    return [(b, min(n, b + size)) for b in range(0, n, size)], True


def _row_sum(rows: np.ndarray) -> np.ndarray:
    """`row_sum` of ATen on rows of width W (vectors, or scalars as W = 1), in fp32."""
    m, w = rows.shape
    groups = m // _ILP
    acc = np.zeros((_LEVELS, _ILP, w), dtype=_F32)
    power = _level_power(groups)
    step, mask = 1 << power, (1 << power) - 1
    i = 0
    while i + step <= groups:
        for _ in range(step):
            acc[0] += rows[i * _ILP:(i + 1) * _ILP]
            i += 1
        _flush(acc, i, power, mask)
    while i < groups:
        acc[0] += rows[i * _ILP:(i + 1) * _ILP]
        i += 1
    return _finish_rows(acc, rows[groups * _ILP:])


def _flush(acc: np.ndarray, i: int, power: int, mask: int) -> None:
    for j in range(1, _LEVELS):
        acc[j] += acc[j - 1]
        acc[j - 1] = 0
        if i & (mask << (j * power)):
            break


def _finish_rows(acc: np.ndarray, leftover: np.ndarray) -> np.ndarray:
    """The cascade's levels, then the leftover rows, then the ILP accumulators."""
    part = acc[0].copy()
    for j in range(1, _LEVELS):
        part += acc[j]
    for row in leftover:
        part[0] += row
    out = part[0].copy()
    for k in range(1, _ILP):
        out += part[k]
    return out


def _finish_range(vector: np.ndarray, scalars: np.ndarray) -> np.float32:
    """The leftover scalars of a range, then the lanes of its vector sum, from zero."""
    total = _F32(0)
    for x in scalars:
        total = _F32(total + x)
    for x in vector:
        total = _F32(total + x)
    return total


def small_sum(x: np.ndarray, width: int) -> np.float32:
    """torch's sum of a short fp32 vector (a range, the slots, mergekit's mean of cosines)."""
    x = np.asarray(x, dtype=_F32)
    if x.size >= width:
        whole = x.size // width * width
        return _finish_range(_row_sum(x[:whole].reshape(-1, width)), x[whole:])
    return _F32(_row_sum(x.reshape(-1, 1))[0])


def _slot_sum(range_sums: np.ndarray, threads: int, width: int, slotted: bool) -> np.float32:
    """The ranges' sums as torch adds them: in per-thread slots, then summed, when slotted."""
    if not slotted:
        return _F32(range_sums[0])
    slots = np.zeros(threads, dtype=_F32)
    slots[:len(range_sums)] = range_sums
    return _F32(_F32(0) + small_sum(slots, width))


def torch_sum(x: np.ndarray, threads: int, width: int) -> np.float32:
    """torch's `x.sum()` of a 1-D fp32 array, in numpy (for probes and tests: slow)."""
    spans, slotted = _ranges(x.size, threads)
    sums = np.array([_F32(0) + small_sum(x[b:e], width) for b, e in spans], dtype=_F32)
    return _slot_sum(sums, threads, width, slotted)


def _fma32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """a·b + c rounded once to fp32. In fp64 a·b is exact and TwoSum recovers the sum's
    rounding error exactly, which settles the one case where rounding to fp64 first lands
    on a midpoint between two fp32 values."""
    prod, add = float(a) * float(b), float(c)
    total = prod + add
    back = total - prod
    err = (prod - (total - back)) + (add - back)
    rounded = _F32(total)
    if err != 0 and float(rounded) != total:
        other = np.nextafter(rounded, _F32(np.inf if total > float(rounded) else -np.inf))
        if (float(rounded) + float(other)) / 2 == total:  # a tie that the error breaks
            return max(rounded, other) if err > 0 else min(rounded, other)
    return rounded


def _square_tail(total: np.float32, tail: np.ndarray, fused_from: int) -> np.float32:
    """total + each tail element squared, in order; from index `fused_from` on as one fused
    multiply-add each (how the compiler built torch's scalar loop: see `TAILS`)."""
    for i, v in enumerate(tail):
        total = _fma32(v, v, total) if i >= fused_from else _F32(total + _F32(v * v))
    return total


# where the norm's scalar loop over the last n mod L elements uses fused multiply-adds, as a
# function of their count r: torch 2.13's x86-64 wheel squares four at a time as a vector and
# fuses the remaining r mod 4 ("unrolled"); the others are what other compilers may build
TAILS = {"unrolled": lambda r: r // 4 * 4, "plain": lambda r: r, "fused": lambda r: 0}


def _lanes_norm(lanes_: np.ndarray, tail: np.ndarray, rule: str) -> np.float32:
    """The norm from its L lane sums of squares and the elements past the whole vectors."""
    total = lanes_[0]
    for v in lanes_[1:]:
        total = _F32(total + v)
    return _F32(np.sqrt(_square_tail(total, tail, TAILS[rule](tail.size))))


def torch_norm(x: np.ndarray, width: int, tail: str) -> np.float32:
    """torch's `torch.norm(x, dim=-1)` of a 1-D fp32 array, in numpy."""
    whole = x.size // width * width
    lanes_ = np.zeros(width, dtype=_F32)
    for row in x[:whole].reshape(-1, width):
        lanes_ += row * row
    return _lanes_norm(lanes_, x[whole:], tail)


class Order(NamedTuple):
    """How this torch reduces fp32: vector lanes and the norm's tail (`TAILS`)."""

    width: int
    tail: str


@functools.cache
def order(threads: int) -> Order | None:
    """The `Order` in which this torch's fp32 sum and norm reduce on `threads` intra-op
    threads, found by matching its results on probes (every tail length, ranges split across
    threads); None when no candidate reproduces them."""
    rng = np.random.default_rng(0)
    probes = [rng.standard_normal(n).astype(_F32)
              for n in [8 * q + r for q in (0, 1, 5) for r in range(1, 8) for _ in range(4)]
              + [4099, 70001]]
    with torch_threads(threads):
        want = [(float(torch.from_numpy(p).sum(dim=-1)),
                 float(torch.norm(torch.from_numpy(p), dim=-1))) for p in probes]
    for width in (8, 16, 4, 32):
        if not all(float(torch_sum(p, threads, width)) == w[0]
                   for p, w in zip(probes, want, strict=True)):
            continue
        for tail in TAILS:
            if all(float(torch_norm(p, width, tail)) == w[1]
                   for p, w in zip(probes, want, strict=True)):
                return Order(width, tail)
    return None


class _Span(NamedTuple):
    """Where one range's elements go: the cascade (whole groups) up to `cascade_end`, a flush
    after every `block` elements up to `blocks_end`; the rest is kept (`_Span.total`)."""

    size: int
    cascade_end: int
    blocks_end: int
    block: int
    power: int

    @classmethod
    def of(cls, size: int, width: int) -> _Span:
        vectors = size // width if size >= width else 0
        groups = vectors // _ILP
        power = _level_power(groups if size >= width else size // _ILP)
        return cls(size, groups * _ILP * width, (groups >> power << power) * _ILP * width,
                   (1 << power) * _ILP * width, power)

    def total(self, cascade: np.ndarray, rest: np.ndarray, width: int) -> np.float32:
        """The range's sum from its cascade and kept elements, as its thread stores it."""
        if self.size < width:  # fewer elements than lanes: scalars in groups of four
            return _F32(_F32(0) + small_sum(rest[:self.size], width))
        vectors = self.size // width
        leftover = (vectors - vectors // _ILP * _ILP) * width
        vector = _finish_rows(cascade.reshape(_LEVELS, _ILP, width),
                              rest[:leftover].reshape(-1, width))
        return _F32(_F32(0) + _finish_range(vector, rest[leftover:leftover + self.size
                                                         - vectors * width]))


class ModelStockSums:
    """mergekit's fp32 norms ‖δᵢ‖ and dots δᵢ·δⱼ of one tensor's offsets δᵢ = θᵢ − θ₀
    (i = 1..K), from its chunks in order, in torch's order for `threads` and `width`.

    Memory: a few hundred floats per pair, whatever the tensor's size."""

    def __init__(self, numel: int, k: int, threads: int, order_: Order) -> None:
        self.numel, self.k, self.threads = numel, k, threads
        self.width, self._tail = order_.width, order_.tail
        self.pairs = k * (k - 1) // 2
        self.spans, self._slotted = _ranges(numel, threads)
        w = _ILP * self.width
        self.norm_lanes = np.zeros((k, self.width), dtype=_F32)
        self.norm_rest = np.zeros((k, self.width), dtype=_F32)
        self.cascade = np.zeros((self.pairs, _LEVELS, w), dtype=_F32)
        self.rest = np.zeros((self.pairs, w), dtype=_F32)
        self.range_sums = np.zeros((self.pairs, len(self.spans)), dtype=_F32)
        self._span = 0
        self._geometry = _Span.of(self.spans[0][1] - self.spans[0][0], self.width)

    def update(self, base: np.ndarray, fts: np.ndarray, start: int) -> None:
        """Elements [start, start + len(base)) of θ₀ (`base`) and the fine-tunes (rows of
        `fts`), as fused loads them (bf16 bits or fp32)."""
        stop = start + base.size
        at = start
        while at < stop:
            b, e = self.spans[self._span]
            upto = min(stop, e)
            g = self._geometry
            _update(base[at - start:upto - start], fts[:, at - start:upto - start], at,
                    self.numel - self.numel % self.width, self.width, self.norm_lanes,
                    self.norm_rest, b, g.cascade_end, g.blocks_end, g.block, g.power,
                    self.cascade, self.rest)
            at = upto
            if at == e:
                self._finish_span()

    def _finish_span(self) -> None:
        for p in range(self.pairs):
            self.range_sums[p, self._span] = self._geometry.total(self.cascade[p], self.rest[p],
                                                                  self.width)
        self.cascade[:] = 0
        self._span += 1
        if self._span < len(self.spans):
            b, e = self.spans[self._span]
            self._geometry = _Span.of(e - b, self.width)

    def norms(self) -> np.ndarray:
        """‖δᵢ‖ in fp32, as `torch.norm(δᵢ, dim=-1)`."""
        tail = self.numel % self.width
        return np.array([_lanes_norm(self.norm_lanes[i], self.norm_rest[i, :tail], self._tail)
                         for i in range(self.k)], dtype=_F32)

    def dots(self) -> np.ndarray:
        """δᵢ·δⱼ for the pairs i < j in order, in fp32, as `(δᵢ * δⱼ).sum(dim=-1)`."""
        return np.array([_slot_sum(self.range_sums[p], self.threads, self.width, self._slotted)
                         for p in range(self.pairs)], dtype=_F32)


_BLOCK = 4096  # elements whose offsets are computed together (they stay in the L1 cache)


@njit(nogil=True, cache=True, error_model="numpy")
def _update(base, fts, start, norm_end, width, norm_lanes, norm_rest, span_start,
            cascade_end, blocks_end, block, power, cascade, rest):
    """One span's elements [start, start + base.size): the offsets, their squares into the
    norm lanes, their pairwise products into the cascade (or, past its whole groups, kept
    for `_finish_span`)."""
    k, n = fts.shape[0], base.size
    offsets = np.empty((k, _BLOCK), dtype=np.float32)
    products = np.empty(_BLOCK, dtype=np.float32)
    widened = np.empty(_BLOCK, dtype=np.float32)
    for s0 in range(0, n, _BLOCK):
        m = min(_BLOCK, n - s0)
        _widen(base[s0:s0 + m], widened)
        for i in range(k):
            _delta(fts[i, s0:s0 + m], widened, offsets[i])
        for i in range(k):
            _norm_block(offsets[i, :m], start + s0, norm_end, width, norm_lanes[i],
                        norm_rest[i])
        p = 0
        for i in range(k):
            for j in range(i + 1, k):
                for t in range(m):
                    products[t] = offsets[i, t] * offsets[j, t]
                _cascade_block(products[:m], start + s0 - span_start, cascade_end,
                               blocks_end, block, power, cascade[p], rest[p])
                p += 1


@njit(nogil=True, cache=True, error_model="numpy")
def _columns8(x, j, stride, rows, acc, at, square):
    """acc[at:at + 8] += x[j + r·stride : j + r·stride + 8] (squared if `square`) for r in
    0..rows-1, each lane in order: eight scalar accumulators, which the compiler keeps in one
    vector register (a loop over a lane array runs 4x slower)."""
    a0, a1, a2, a3 = acc[at], acc[at + 1], acc[at + 2], acc[at + 3]
    a4, a5, a6, a7 = acc[at + 4], acc[at + 5], acc[at + 6], acc[at + 7]
    if square:
        for r in range(rows):
            b = j + r * stride
            a0 += x[b] * x[b]
            a1 += x[b + 1] * x[b + 1]
            a2 += x[b + 2] * x[b + 2]
            a3 += x[b + 3] * x[b + 3]
            a4 += x[b + 4] * x[b + 4]
            a5 += x[b + 5] * x[b + 5]
            a6 += x[b + 6] * x[b + 6]
            a7 += x[b + 7] * x[b + 7]
    else:
        for r in range(rows):
            b = j + r * stride
            a0 += x[b]
            a1 += x[b + 1]
            a2 += x[b + 2]
            a3 += x[b + 3]
            a4 += x[b + 4]
            a5 += x[b + 5]
            a6 += x[b + 6]
            a7 += x[b + 7]
    acc[at], acc[at + 1], acc[at + 2], acc[at + 3] = a0, a1, a2, a3
    acc[at + 4], acc[at + 5], acc[at + 6], acc[at + 7] = a4, a5, a6, a7


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _norm_block(x, e0, norm_end, width, lanes_, rest):
    m, j = x.size, 0
    whole = min(m, max(0, norm_end - e0))
    while j < whole and (e0 + j) % width != 0:
        lanes_[(e0 + j) % width] += x[j] * x[j]
        j += 1
    rows = (whole - j) // width
    if width == 8:
        _columns8(x, j, 8, rows, lanes_, 0, True)
    else:
        for r in range(rows):
            for t in range(width):
                lanes_[t] += x[j + r * width + t] * x[j + r * width + t]
    j += rows * width
    while j < m:
        e = e0 + j
        if e < norm_end:
            lanes_[e % width] += x[j] * x[j]
        else:
            rest[e - norm_end] = x[j]
        j += 1


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _cascade_block(x, q0, cascade_end, blocks_end, block, power, cascade, rest):
    w = cascade.shape[1]
    m, j = x.size, 0
    mask = (1 << power) - 1
    while j < m:
        q = q0 + j
        if q >= cascade_end:
            rest[q - cascade_end] = x[j]
            j += 1
            continue
        if q % w == 0 and j + w <= m:  # whole groups, up to the next flush (cascade_end and
            limit = min(m - j, cascade_end - q)  # the flush points are whole groups)
            flush_at = (q // block + 1) * block
            if flush_at <= blocks_end:
                limit = min(limit, flush_at - q)
            groups = limit // w
            if w == 32:
                for k in range(4):
                    _columns8(x, j + 8 * k, 32, groups, cascade[0], 8 * k, False)
            else:
                for g in range(groups):
                    for t in range(w):
                        cascade[0, t] += x[j + g * w + t]
            j += groups * w
        else:
            cascade[0, q % w] += x[j]
            j += 1
        done = q0 + j
        if done % block == 0 and done <= blocks_end:
            groups = done // w
            for lvl in range(1, 4):
                for t in range(w):
                    cascade[lvl, t] += cascade[lvl - 1, t]
                    cascade[lvl - 1, t] = 0
                if groups & (mask << (lvl * power)):
                    break
