"""SLERP and model stock: norms and dot products first, then a blend, as mergekit 0.1.5 does.

Both need whole-tensor statistics, streamed chunk by chunk, and then combine chunk by chunk in
mergekit's order of fp32 operations. SLERP's statistics are mergekit's own: fp32 norms and dot
products over blocks of 2²⁰ elements, with torch's ops on as many threads as mergekit would use,
so the result equals mergekit's bit for bit (two passes: norms, then the dot product of the
normalised vectors). Model stock's: mergekit reduces whole tensors at once in fp32, and
`torch_order` replays torch's order of that reduction chunk by chunk, so t has its bits too.

SLERP (two models, θ₀ and θ₁, each tensor one vector; Shoemake 1985, as mergekit applies it):
    v̂ = v/‖v‖ (unless ‖v‖ ≤ 1e-8), d = clamp(v̂₀·v̂₁, −1, 1); |d| > 0.9995: θ = (1−t)θ₀ + tθ₁
    (nearly parallel); else Ω = arccos d, θ = sin((1−t)Ω)/sin Ω · θ₀ + sin(tΩ)/sin Ω · θ₁.
Model stock (Jang et al. 2024, arXiv 2403.19522, as mergekit computes it, per tensor):
    δᵢ = θᵢ − θ₀, cos = mean over pairs i<j of δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6) clamped to [−1, 1],
    t = N·cos / (1 + (N−1)·cos) (0 where |1 + (N−1)·cos| < 1e-6),
    θ = t·(Σᵢ θᵢ)/N + (1−t)·θ₀.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..checkpoint import Checkpoint, direct
from . import fused, torch_order
from .ops import TensorOp, TensorStatistic
from .statistics import StatisticsFirst, collect_statistics, statistics_buffers

__all__ = ["SlerpCosine", "model_stock_t", "plan_model_stock", "plan_slerp", "slerp_coefficients"]

SLERP_DOT_THRESHOLD = 0.9995  # mergekit's DOT_THRESHOLD: above it, lerp
SLERP_EPS = 1e-8  # mergekit's eps: norms at or below it are not normalised
SLERP_BLOCK = 1024 * 1024  # mergekit's _CHUNK_ELEMENTS: its norms and dots are summed per block
STOCK_EPS = 1e-6  # mergekit's clamp of the norm product


class StockSums(TensorStatistic):
    """mergekit's fp32 norms ‖δᵢ‖ and dot products δᵢ·δⱼ of one tensor's offsets
    δᵢ = θᵢ − θ₀, summed in torch's order (`torch_order`), so that t has mergekit's bits."""

    def __init__(self, numel: int, k: int, threads: int, order: torch_order.Order) -> None:
        self.sums = torch_order.ModelStockSums(numel, k, threads, order)

    def update(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> None:
        if not fused.supported(tensors):  # float16: mergekit's fp32 values, exactly
            tensors = [t.float() for t in tensors]
        self.sums.update(fused.as_array(tensors[0]), fused.as_rows(tensors[1:]), start)


class SlerpCosine(TensorStatistic):
    """cos(θ₀, θ₁) of one tensor in mergekit 0.1.5's order of operations.

    Pass 1: ‖·‖ of each block of 2²⁰ elements, then the norm of those norms (norms at or
    below 1e-8 count as 1). Pass 2: Σ (x/‖θ₀‖)(y/‖θ₁‖) per block, then the sum of the block
    sums, clamped to [−1, 1]. Each block is reduced by the same torch op, on the threads the
    statistics pass runs (torch's sums split work by thread: the bits depend on their count).
    Memory: one fp32 block per input, the scratch rows shared by the tensors of a merge, into
    which the chunks are widened at their offset in the block (a block may span chunks; the
    passes read one tensor's chunks in order before the next tensor's).
    """

    def __init__(self, numel: int, dtype: torch.dtype,
                 scratch: dict[torch.dtype, torch.Tensor]) -> None:
        self.numel, self._scratch = numel, scratch
        self.work = torch.float64 if dtype == torch.float64 else torch.float32
        self.second_pass = False
        self.norm_parts: tuple[list, list] = ([], [])
        self.dot_parts: list[torch.Tensor] = []
        self.norms: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dot = torch.ones((), dtype=self.work)  # an empty tensor is interpolated linearly

    def update(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> None:
        if self.work not in self._scratch:
            self._scratch[self.work] = torch.empty(2, SLERP_BLOCK, dtype=self.work)
        rows = self._scratch[self.work]
        pos = start
        while pos < stop:  # cut at mergekit's block boundaries
            first = pos // SLERP_BLOCK * SLERP_BLOCK
            end = min(stop, first + SLERP_BLOCK)
            for row, t in zip(rows, tensors, strict=True):
                row[pos - first:end - first].copy_(t[pos - start:end - start])
            if end % SLERP_BLOCK == 0 or end == self.numel:
                self._block(rows[:, :end - first])
            pos = end

    def _block(self, rows: torch.Tensor) -> None:
        """One block, widened in the scratch rows and reduced there: no temporaries the size
        of a block (the heap would grow with them over a large tensor)."""
        n = rows.shape[1]
        x, y = (row.view(1, n) for row in rows)
        if not self.second_pass:
            self.norm_parts[0].append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
            self.norm_parts[1].append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
        else:
            n0, n1 = self.norms
            torch.div(x, n0, out=x)  # x/‖θ₀‖, y/‖θ₁‖, then their product: mergekit's order
            torch.div(y, n1, out=y)
            torch.mul(x, y, out=x)
            self.dot_parts.append(x.sum(dim=1, keepdim=True))

    def end_pass(self) -> bool:
        if self.numel == 0:
            return False
        if not self.second_pass:
            norms = [torch.linalg.vector_norm(torch.stack(p), dim=0) for p in self.norm_parts]
            self.norms = tuple(torch.where(n > SLERP_EPS, n, 1) for n in norms)
            self.second_pass = True
            return True
        self.dot = torch.stack(self.dot_parts).sum(dim=0).clamp(-1, 1).reshape(())
        return False


def slerp_coefficients(t: float, dot: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s₀, s₁, interpolated linearly) of θ = s₀θ₀ + s₁θ₁ given the clamped cosine `dot`
    (fp32, one entry per vector), in mergekit's fp32 arithmetic."""
    tt = torch.tensor(t, dtype=dot.dtype)
    linear = dot.abs() > SLERP_DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin = torch.sin(theta)
    s0 = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin)
    s1 = torch.where(linear, tt, torch.sin(tt * theta) / sin)
    return s0, s1, linear


class SlerpOp(TensorOp):
    """s₀·θ₀ + s₁·θ₁ in fp32: two rounded products, then their rounded sum (mergekit's
    order)."""

    def __init__(self, s0: torch.Tensor, s1: torch.Tensor) -> None:
        self.s0, self.s1 = s0, s1

    def apply(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        a, b = tensors
        return self.s0 * a.float() + self.s1 * b.float()

    def fill(self, tensors: Sequence[torch.Tensor], start: int, stop: int,
             out: torch.Tensor) -> float | None:
        if not fused.supported(tensors, out):
            return None
        return float(fused.slerp_combine(*(fused.as_array(t) for t in tensors),
                                         np.float32(self.s0.item()), np.float32(self.s1.item()),
                                         fused.as_array(out)))


def model_stock_t(norms: np.ndarray, dots: np.ndarray, width: int) -> float:
    """mergekit's t from the fp32 norms of the offsets δ₁..δ_N and their dot products (pairs
    i < j in order), in its fp32 operations; `width`: torch's vector lanes, which order the
    mean of the cosines."""
    n = norms.size
    eps = np.float32(STOCK_EPS)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    cos = np.array([np.clip(dots[p] / max(np.float32(norms[i] * norms[j]), eps), -1, 1)
                    for p, (i, j) in enumerate(pairs)], dtype=np.float32)
    c = np.float32(torch_order.small_sum(cos, width) / np.float32(len(pairs)))
    denominator = np.float32(1) + np.float32(n - 1) * c
    if abs(denominator) < eps:  # no finite estimate: keep θ₀, as mergekit 0.1.5
        return 0.0
    return float(np.float32(np.float32(n) * c) / denominator)


class ModelStockOp(TensorOp):
    """t·(Σ θᵢ)/N + (1 − t)·θ₀ in fp32, in mergekit's order."""

    def __init__(self, t: float) -> None:
        self.t = torch.tensor(t, dtype=torch.float32)

    def apply(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        ws = [x.float() for x in tensors[1:]]
        avg = ws[0].clone()
        for w in ws[1:]:
            avg += w
        avg /= len(ws)
        return self.t * avg + (1 - self.t) * tensors[0].float()

    def fill(self, tensors: Sequence[torch.Tensor], start: int, stop: int,
             out: torch.Tensor) -> float | None:
        if not fused.supported(tensors, out):
            return None
        return float(fused.stock_combine(fused.as_array(tensors[0]),
                                         fused.as_rows(tensors[1:]),
                                         np.float32(self.t.item()), fused.as_array(out)))


def _floats(base: Checkpoint) -> list[str]:
    return [n for n in base.names if base.dtype(n).is_floating_point]


def plan_slerp(inputs: Sequence[Checkpoint], t: float
               ) -> tuple[dict[str, StatisticsFirst], list[str]]:
    """Per tensor, when the merge reaches it: two statistics passes (norms, then the dot
    product), then the op; the merge's own read then finds the tensor in the page cache
    (passes over the whole model first read an 8B from the disk twice: 2.0x the floor with
    the cache emptied first).

    Returns (ops, the tensors interpolated linearly, for the recipe: filled as the merge
    builds the ops, in the merge's order)."""
    threads = torch.get_num_threads()  # mergekit's: torch's default, here outside the passes
    base, scratch, linear = inputs[0], {}, []
    buffers = statistics_buffers(inputs)

    def build(name: str, st: SlerpCosine) -> SlerpOp:
        s0, s1, lin = slerp_coefficients(t, st.dot.float())
        if bool(lin):
            linear.append(name)
        return SlerpOp(s0, s1)

    ops = {n: StatisticsFirst(inputs, n, SlerpCosine(math.prod(base.shape(n)), base.dtype(n),
                                                     scratch), functools.partial(build, n),
                              buffers, threads=threads)
           for n in _floats(base)}
    # not `look_ahead`: one tensor ahead gave the same bytes but no speed (1.2B warm 4.2-5.0 s
    # against 4.3 s; 8B cold 46.7 s against 45.1 s): its passes run torch on 2 threads, which
    # then compete with the merge for the 2 cores
    return ops, linear


def plan_model_stock(inputs: Sequence[Checkpoint]) -> tuple[dict[str, ModelStockOp], dict]:
    """One statistics pass (the offsets' norms and dot products per tensor), then the ops.

    Returns (ops, per-tensor t for the recipe)."""
    threads = torch.get_num_threads()  # mergekit's: its sums split work by thread
    order = torch_order.order(threads)
    if order is None:
        warnings.warn("this torch's fp32 reduction order was not recognised: model stock's "
                      "t follows torch 2.13's x86-64 order and may differ from mergekit's "
                      "in its last bits", stacklevel=2)
        order = torch_order.Order(8, "unrolled")
    k = len(inputs) - 1
    stats = {n: StockSums(math.prod(inputs[0].shape(n)), k, threads, order)
             for n in _floats(inputs[0])}
    collect_statistics(inputs, stats, direct=direct.wanted(sum(c.nbytes for c in inputs)))
    ts = {n: model_stock_t(s.sums.norms(), s.sums.dots(), order.width)
          for n, s in stats.items()}
    return {n: ModelStockOp(t) for n, t in ts.items()}, ts
