"""TIES, DARE and breadcrumbs: sparsified task vectors, optionally with TIES' sign election.

mergekit's "generalized task arithmetic", per tensor, with τᵢ = θᵢ − θ₀ in fp32 and wᵢ the
weight of input i (Yadav et al. 2023, arXiv 2306.01708; Yu et al. 2023, arXiv 2311.03099;
Davari & Belilovsky 2023, arXiv 2312.06795):

    τ̃ᵢ = sparsify(τᵢ)·wᵢ          magnitude top-k (TIES), band (breadcrumbs) or Bernoulli (DARE)
    without consensus:  m = Σᵢ τ̃ᵢ,             d = Σᵢ wᵢ       (|d| < 1e-8: d = 1)
    with consensus:     s = sign(Σᵢ τ̃ᵢ) (≥ 0: +1),  Mᵢ = [sign(τ̃ᵢ) = s]
                        m = Σᵢ Mᵢ·τ̃ᵢ,          d = Σᵢ Mᵢ·wᵢ    (d = 0: d = 1)
    θ = θ₀ + λ·(m / d if normalize else m)

Sparsification: magnitude keeps the k = int(density·n) largest |τᵢ|; the band drops the
int(gamma·n) largest and then the smallest so that int(density·n) stay; ties at a boundary
are kept in index order (`select`). DARE keeps each element with probability density
(`dropout`) and rescales what it keeps: by 1/density (the paper's, `rescale="density"`) or,
as mergekit's `rescale: true` does, by ‖τᵢ‖₁/‖bᵢ⊙τᵢ‖₁ per tensor (`"l1"`, after a statistics
pass; no scaling where either norm is below 1e-7). The order of the fp32
operations is mergekit's, so the outputs agree to the last bit where the selections agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..errors import UsageError
from . import fused
from .dropout import hash_key, keep_mask, keep_threshold
from .ops import TensorOp, TensorStatistic
from .select import STATS_BUDGET, RankWindow, WindowMask, WindowSelect
from .statistics import StatisticsFirst, look_ahead, statistics_buffers

__all__ = ["METHODS", "RESCALES", "SparseMethod", "SparseParams", "plan_sparse"]

RESCALES = ("density", "l1", "none")
_L1_EPS = 1e-7  # mergekit's: norms below it are not matched


@dataclass(frozen=True)
class SparseMethod:
    """One of mergekit's generalized task arithmetic methods, with its defaults."""

    name: str
    sparsify: str  # "magnitude", "band", "random" or "none" (task arithmetic)
    consensus: bool
    normalize: bool  # mergekit's default for `normalize`
    rescale: bool  # mergekit's default for `rescale` (DARE only here: True is "l1")
    formula: str


_T = "τᵢ = θᵢ − θ₀"
METHODS = {m.name: m for m in (
    # mergekit's task_arithmetic: no sparsification, its fp32 operation order (the linear
    # kernel's θ₀ + Σ (λ·wᵢ)·τᵢ rounds λ·wᵢ first and differs from it in the last bits)
    SparseMethod("task-arithmetic", "none", False, False, False,
                 f"θ = θ₀ + λ·Σᵢ wᵢ·τᵢ (÷ Σᵢ wᵢ with normalize), {_T}"),
    SparseMethod("ties", "magnitude", True, True, False,
                 f"θ = θ₀ + λ·Σᵢ Mᵢ·wᵢ·topk(τᵢ) / Σᵢ Mᵢ·wᵢ, Mᵢ = [sign agrees with the "
                 f"elected sign of Σᵢ wᵢ·topk(τᵢ)], {_T}"),
    SparseMethod("dare-linear", "random", False, False, True,
                 f"θ = θ₀ + λ·Σᵢ wᵢ·(bᵢ⊙τᵢ)/p, bᵢ ~ Bernoulli(p) by a seeded hash, {_T}"),
    SparseMethod("dare-ties", "random", True, False, True,
                 f"θ = θ₀ + λ·Σᵢ Mᵢ·wᵢ·(bᵢ⊙τᵢ)/p with TIES' sign election, {_T}"),
    SparseMethod("breadcrumbs", "band", False, False, False,
                 f"θ = θ₀ + λ·Σᵢ wᵢ·band(τᵢ): drop the largest γ and the smallest "
                 f"magnitudes, keep density p, {_T}"),
    SparseMethod("breadcrumbs-ties", "band", True, False, False,
                 f"θ = θ₀ + λ·Σᵢ Mᵢ·wᵢ·band(τᵢ) with TIES' sign election, {_T}"),
)}


@dataclass(frozen=True)
class SparseParams:
    """Per-input parameters (one per fine-tune) and the global ones, mergekit's names."""

    weights: tuple[float, ...]
    densities: tuple[float, ...]
    gammas: tuple[float, ...] = ()  # breadcrumbs only
    lambda_: float = 1.0
    normalize: bool = False
    rescale: str = "none"  # DARE: "density" (÷ density), "l1" (mergekit's norm match), "none"
    seed: int | None = None  # DARE only

    def check(self, method: SparseMethod) -> None:
        """Refuse, in one line, anything outside the method's domain."""
        k = len(self.weights)
        if k < 1:
            raise UsageError(f"{method.name} needs at least one fine-tuned model after BASE")
        for what, values in (("weights", self.weights), ("density", self.densities),
                             ("gamma", self.gammas), ("lambda", (self.lambda_,))):
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise UsageError(f"{what} must be finite, got {bad[0]}")
        if len(self.densities) != k or (method.sparsify == "band" and len(self.gammas) != k):
            raise UsageError(f"give one density (and gamma) for all {k} fine-tuned models or "
                             "one per model")
        for d in self.densities:
            if not 0.0 < d <= 1.0:
                raise UsageError(f"density must be in (0, 1], got {d}")
        for g in self.gammas:
            if g < 0:
                raise UsageError(f"gamma must be >= 0, got {g}")
        if self.rescale not in RESCALES:
            raise UsageError(f"rescale must be one of {', '.join(RESCALES)}, got "
                             f"{self.rescale!r}")
        if method.sparsify == "random" and (self.seed is None or self.seed < 0):
            raise UsageError(f"{method.name} needs a seed >= 0 (its drop mask is a hash of "
                             "the seed, the tensor name and the element index)")


class SparseMergeOp(TensorOp):
    """One tensor of a TIES / DARE / breadcrumbs merge, chunk by chunk, in order."""

    def __init__(self, name: str, method: SparseMethod, params: SparseParams,
                 masks: Sequence[WindowMask | None],
                 l1_scales: Sequence[float] | None = None) -> None:
        self.name, self.method, self.params, self.masks = name, method, params, masks
        self.l1_scales = l1_scales
        self._fused: _FusedParams | None = None

    def _sparse(self, i: int, tau: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """τᵢ sparsified, in place (τ is a fresh fp32 tensor)."""
        p = self.params
        if self.method.sparsify == "none":
            return tau
        if self.method.sparsify == "random":
            if p.densities[i] < 1:
                tau.mul_(keep_mask(p.seed or 0, self.name, start, stop, p.densities[i]))
                if p.rescale == "density":
                    tau.div_(p.densities[i])
                elif self.l1_scales is not None and self.l1_scales[i] != 1.0:
                    tau.mul_(self.l1_scales[i])
            return tau
        mask = self.masks[i](tau.abs().view(torch.int32))  # magnitude bits (see select)
        return tau if mask is None else tau.mul_(mask)

    def fill(self, tensors: Sequence[torch.Tensor], start: int, stop: int,
             out: torch.Tensor) -> float | None:
        """The fused loop (`fused.sparse_combine`): the same bits as `apply`, one pass."""
        fts = tensors[1:]
        if not fused.supported(tensors, out):
            return None
        if self._fused is None:
            self._fused = _FusedParams.of(self)
        f = self._fused
        return float(fused.sparse_combine(
            fused.as_array(tensors[0]), fused.as_rows(fts), start,
            f.mode, f.win, f.seen, f.hash_keys, f.hash_thresholds, f.rescale, f.rescale_by,
            f.weights, int(self.method.consensus), int(self.params.normalize), f.divisor,
            f.lam, fused.as_array(out)))

    def apply(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        p = self.params
        base = tensors[0].float()
        weighted = [self._sparse(i, t.float() - base, start, stop).mul_(w)
                    for i, (t, w) in enumerate(zip(tensors[1:], p.weights, strict=True))]
        if not self.method.consensus:
            mixed = _sum(weighted, into_first=True)
            divisor = torch.tensor(p.weights, dtype=torch.float32).sum()
            if divisor.abs() < 1e-8:
                divisor = torch.ones(())
        elif len(weighted) == 1:
            # one input agrees with its own elected sign wherever it is not zero, so the
            # divisor is w there and 1 elsewhere; with w > 0 dividing everything by w gives
            # the same values (a zero stays the same zero): no temporaries at all
            mixed = weighted[0]
            w = p.weights[0]
            divisor = (torch.tensor(w, dtype=torch.float32) if w > 0
                       else torch.where(mixed != 0, torch.tensor(w), 1.0))
        else:
            mixed, divisor = _elect(weighted, p.weights)
        if p.normalize:
            mixed = mixed.div_(divisor)
        if p.lambda_ != 1:
            mixed = mixed.mul_(p.lambda_)
        return mixed.add_(base)


@dataclass
class _FusedParams:
    """One tensor's SparseMergeOp as the arrays `fused.sparse_combine` reads."""

    mode: np.ndarray
    win: np.ndarray
    seen: np.ndarray  # running tie counts, carried from chunk to chunk
    hash_keys: np.ndarray
    hash_thresholds: np.ndarray
    rescale: int
    rescale_by: np.ndarray
    weights: np.ndarray
    divisor: np.float32
    lam: np.float32

    @classmethod
    def of(cls, op: SparseMergeOp) -> _FusedParams:
        p, k = op.params, len(op.params.weights)
        mode = np.full(k, fused.KEEP_ALL, dtype=np.int64)
        win = np.zeros((k, 11), dtype=np.int64)
        keys = np.zeros((k, 2), dtype=np.uint64)
        thresholds = np.zeros(k, dtype=np.uint64)
        rescale, rescale_by = fused.RESCALE_NONE, np.ones(k, dtype=np.float32)
        if op.method.sparsify == "random":
            k1, k2 = hash_key(p.seed or 0, op.name)
            keys[:] = (int(k1), int(k2))
            for i, d in enumerate(p.densities):
                if d < 1:
                    mode[i], thresholds[i] = fused.BY_HASH, keep_threshold(d)
            if p.rescale == "density":
                rescale, rescale_by[:] = fused.RESCALE_DENSITY, p.densities
            elif op.l1_scales is not None:
                rescale, rescale_by[:] = fused.RESCALE_FACTOR, op.l1_scales
        elif op.method.sparsify != "none":
            for i, mask in enumerate(op.masks):
                kind, row = mask.decision() if mask is not None else ("all", [])
                mode[i] = {"all": fused.KEEP_ALL, "none": fused.KEEP_NONE,
                           "rank": fused.BY_RANK}[kind]
                if row:
                    win[i] = row
        divisor = torch.tensor(p.weights, dtype=torch.float32).sum()
        if divisor.abs() < 1e-8:
            divisor = torch.ones(())
        return cls(mode, win, np.zeros((k, 2), dtype=np.int64), keys, thresholds, rescale,
                   rescale_by, np.array(p.weights, dtype=np.float32),
                   np.float32(divisor.item()), np.float32(p.lambda_))


def _elect(weighted: Sequence[torch.Tensor], weights: Sequence[float]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """TIES' sign election: (Σᵢ Mᵢ·τ̃ᵢ, Σᵢ Mᵢ·wᵢ with 0 → 1), Mᵢ = [sign τ̃ᵢ = elected]."""
    negative = _sum(weighted) < 0  # elected sign −1; a zero sum elects +1
    agree = [torch.where(negative, d < 0, d > 0) for d in weighted]
    mixed = _sum([d.mul_(a) for d, a in zip(weighted, agree, strict=True)], into_first=True)
    divisor = _sum([a * torch.tensor(w, dtype=torch.float32)
                    for a, w in zip(agree, weights, strict=True)], into_first=True)
    return mixed, divisor.masked_fill_(divisor == 0, 1.0)


def _sum(xs: Sequence[torch.Tensor], *, into_first: bool = False) -> torch.Tensor:
    """Left to right, as torch sums a stacked dim 0 (into xs[0] itself when allowed)."""
    acc = xs[0] if into_first else xs[0].clone()
    for x in xs[1:]:
        acc += x
    return acc


class _KeptL1(TensorStatistic):
    """‖τᵢ‖₁ and ‖bᵢ⊙τᵢ‖₁ of one tensor (fp64 sums), for mergekit's L1 rescaling of DARE."""

    def __init__(self, name: str, params: SparseParams) -> None:
        self.name, self.params = name, params
        k = len(params.weights)
        self.before, self.after = [0.0] * k, [0.0] * k

    def update(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> None:
        base = tensors[0].float()
        for i, t in enumerate(tensors[1:]):
            tau = (t.float() - base).abs_()
            self.before[i] += float(tau.sum(dtype=torch.float64))
            keep = keep_mask(self.params.seed or 0, self.name, start, stop,
                             self.params.densities[i])
            self.after[i] += float(tau.mul_(keep).sum(dtype=torch.float64))

    def scales(self) -> list[float]:
        """‖τ‖₁/‖b⊙τ‖₁ as an fp32 number, or 1 where either norm is below 1e-7."""
        return [1.0 if b < _L1_EPS or a < _L1_EPS else
                float(torch.tensor(b, dtype=torch.float32) / torch.tensor(a, dtype=torch.float32))
                for b, a in zip(self.before, self.after, strict=True)]


def _windows(method: SparseMethod, params: SparseParams, n: int) -> list[RankWindow]:
    if method.sparsify == "magnitude":
        return [RankWindow.top_k(n, d) for d in params.densities]
    return [RankWindow.band(n, d, g) for d, g in zip(params.densities, params.gammas,
                                                     strict=True)]


def plan_sparse(inputs: Sequence[Checkpoint], method: SparseMethod, params: SparseParams, *,
                budget: int = STATS_BUDGET
                ) -> tuple[dict[str, SparseMergeOp | StatisticsFirst], int]:
    """The ops of every floating tensor. Those that need statistics (the magnitude selection,
    DARE's L1 rescale) collect them when the merge reaches their tensor (`StatisticsFirst`).

    Returns (ops by tensor name, statistics passes over each such tensor).
    """
    base = inputs[0]
    names = [n for n in base.names if base.dtype(n).is_floating_point]
    buffers = statistics_buffers(inputs)
    if method.sparsify == "random" and params.rescale == "l1":
        def rescaled(name: str) -> StatisticsFirst:
            return StatisticsFirst(inputs, name, _KeptL1(name, params), lambda s: SparseMergeOp(
                name, method, params, [], s.scales()), buffers)
        ops = {n: rescaled(n) for n in names}
        look_ahead(ops.values())
        return ops, 1 if names else 0
    if method.sparsify in ("random", "none"):
        return {n: SparseMergeOp(n, method, params, []) for n in names}, 0

    windows = {n: _windows(method, params, math.prod(base.shape(n))) for n in names}

    def masked(name: str, bounds) -> SparseMergeOp:
        masks = [WindowMask(w, b) for w, b in zip(windows[name], bounds, strict=True)]
        return SparseMergeOp(name, method, params, masks)

    ops: dict[str, SparseMergeOp | StatisticsFirst] = {}
    passes = 0
    for n in names:
        if all(x.everything or x.empty for x in windows[n]):
            ops[n] = masked(n, [None] * len(windows[n]))
            continue
        select = WindowSelect(windows[n], budget=budget)
        passes = max(passes, select.passes)
        ops[n] = StatisticsFirst(inputs, n, select,
                                 lambda s, n=n: masked(n, s.result()), buffers)
    look_ahead(ops.values())
    return ops, passes
