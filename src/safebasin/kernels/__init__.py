"""The one place where weights are combined: lerp, weighted sums and deltas, squared distance.

Every function computes in fp32 and rounds once, to nearest-even, into the output dtype; the
exact sequence of fp32 operations is fixed (see `_common`), so the torch and Triton
implementations return the same bits for fp32 outputs (on CPU a lerp between 16-bit tensors of
one dtype is one `torch.lerp` pass, whose FMA may move a near-tie by one 16-bit ulp; see
`_torch`). `SAFEBASIN_KERNEL=torch|triton` forces an
implementation; by default Triton serves contiguous CUDA tensors when it imports, and torch
serves everything else (`backend_for` says which one a call gets).

Weights are Python floats or 0-d tensors; a tensor weight on the tensors' CUDA device is read
by the kernel, so nothing waits for the GPU. Tensors must have equal shapes (no broadcasting).

    >>> import torch
    >>> from safebasin import kernels
    >>> a, b = torch.zeros(4, dtype=torch.bfloat16), torch.ones(4, dtype=torch.bfloat16)
    >>> kernels.lerp(a, b, 0.25).tolist()
    [0.25, 0.25, 0.25, 0.25]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import UsageError
from ._common import Weight, check_weight
from ._dispatch import backend_for, implementation


def _impl(*tensors: torch.Tensor | None):
    name = backend_for(*tensors)
    return implementation(name, next(t for t in tensors if t is not None).device)


def _check_shapes(what: str, tensors: Sequence[torch.Tensor]) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if len(set(shapes)) > 1:
        raise UsageError(f"{what}: tensors must have the same shape (no broadcasting), got "
                         f"{', '.join(map(str, shapes[:4]))}")


def _output(what: str, like: torch.Tensor, out: torch.Tensor | None,
            out_dtype: torch.dtype | None) -> torch.Tensor:
    """`out` checked, or a new tensor of `like`'s shape and device in out_dtype or like.dtype."""
    if out is None:
        dtype = out_dtype or like.dtype
        if not dtype.is_floating_point:
            raise UsageError(f"{what}: output dtype must be floating, got {dtype}")
        return torch.empty(like.shape, dtype=dtype, device=like.device)
    if out_dtype is not None and out_dtype != out.dtype:
        raise UsageError(f"{what}: out has dtype {out.dtype} but out_dtype is {out_dtype}; "
                         "give one of them")
    if out.shape != like.shape or not out.is_floating_point():
        raise UsageError(f"{what}: out must be a floating tensor of shape {tuple(like.shape)}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    return out


def lerp(
    a: torch.Tensor,
    b: torch.Tensor,
    w: Weight,
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_sq: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """a + w·(b − a) in fp32, rounded once into `out` (or `out_dtype`, default a's dtype).

    w = 0 returns a and w = 1 returns b exactly (converted to the output dtype). `out` may be
    a or b. With `return_sq`, also returns Σ(b − a)² as a 0-d fp32 tensor (no host sync).

    Raises:
        UsageError: shapes differ, a weight is not finite or not 0-d, or out disagrees.
    """
    w = check_weight(w, "lerp")
    _check_shapes("lerp", [a, b])
    out = _output("lerp", a, out, out_dtype)
    sq = _impl(a, b, out).lerp(a, b, w, out, return_sq)
    return (out, sq) if return_sq else out


def lerp_(
    a: torch.Tensor, b: torch.Tensor, w: Weight, *, return_sq: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """In place: a ← a + w·(b − a), the EMA update with a the shadow, b the weights, w = η.

    Same numerics as `lerp` with out=a; `return_sq` gives Σ(b − a)² of a before the update.
    """
    w = check_weight(w, "lerp_")
    _check_shapes("lerp_", [a, b])
    if not a.is_floating_point():
        raise UsageError(f"lerp_: a must be a floating tensor, got {a.dtype}")
    sq = _impl(a, b).lerp(a, b, w, a, return_sq)
    return (a, sq) if return_sq else a


def lerp_many_(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], w: float) -> None:
    """In place, pair by pair: aᵢ ← aᵢ + w·(bᵢ − aᵢ) (the online EMA's update, one call).

    CPU tensors that are all fp32 go through `torch._foreach_lerp_`: one fused pass per tensor,
    fp32 math with a fused multiply-add where the CPU has one, so a result may differ from
    `lerp_` in the last fp32 bit (the bit-for-bit promise between backends covers merge
    outputs, not EMA shadows). Anything else (a bf16 model with an fp32 shadow, CUDA) goes
    through `lerp_` pair by pair, which keeps the Triton numerics.
    """
    if len(a) != len(b):
        raise UsageError(f"lerp_many_: {len(a)} tensors to update but {len(b)} inputs")
    w = check_weight(w, "lerp_many_")
    fused = [i for i, (x, y) in enumerate(zip(a, b, strict=True))
             if x.device.type == "cpu" and y.device.type == "cpu"
             and x.dtype == y.dtype == torch.float32 and x.shape == y.shape]
    if fused and backend_for(a[fused[0]]) == "torch":
        torch._foreach_lerp_([a[i] for i in fused], [b[i] for i in fused],
                             float(w) if not isinstance(w, torch.Tensor) else w)
    else:
        fused = []
    done = set(fused)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if i not in done:
            lerp_(x, y, w)


def weighted_sum(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[Weight],
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_sq: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Σ wᵢ·tᵢ with an fp32 accumulator, in order, rounded once into `out` (or `out_dtype`).

    A zero weight contributes nothing at all (not 0·tᵢ: Inf/NaN in tᵢ do not leak), so weights
    (0, …, 1, …, 0) copy that input exactly. With `return_sq`, also returns
    Σ(stored result − tensors[0])² as a 0-d fp32 tensor: the squared distance of what was
    written to the first input (θ₀ in every merge).

    Raises:
        UsageError: no tensors, not one weight per tensor, shapes differ, out disagrees.
    """
    tensors, weights = list(tensors), list(weights)
    if len(tensors) != len(weights) or not tensors:
        raise UsageError(f"weighted_sum needs one weight per tensor and at least one tensor, "
                         f"got {len(tensors)} tensors and {len(weights)} weights")
    weights = [check_weight(w, "weighted_sum") for w in weights]
    _check_shapes("weighted_sum", tensors)
    out = _output("weighted_sum", tensors[0], out, out_dtype)
    sq = _impl(*tensors, out).weighted_sum(tensors, weights, out, return_sq)
    return (out, sq) if return_sq else out


def add_deltas(
    base: torch.Tensor,
    others: Sequence[torch.Tensor],
    weights: Sequence[Weight],
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_sq: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """base + Σ wᵢ·(othersᵢ − base) in fp32, rounded once into `out` (or `out_dtype`).

    The task-arithmetic form of a merge whose coefficients sum to 1 (θ₀ + Σ λᵢ·τᵢ): it returns
    the base exactly where every other tensor equals it (a zero task vector, frozen weights),
    which `weighted_sum` with coefficients (1 − Σλ, λ₁, …) does not (up to the sign of a zero
    result). Zero float weights are dropped, so their tensors may hold anything; with one
    weight left it computes `lerp(base, other, w)` bit for bit, whose endpoints w = 0 and
    w = 1 are exact. Tensor weights are not read on the host (no GPU sync): zero ones are
    masked instead, and the lerp form applies when exactly one other tensor is given.

    Args:
        base: θ₀, any floating dtype.
        others: the tensors whose differences from `base` are added (none: a copy of base).
        weights: one float or 0-d tensor per tensor of `others`, any sign.
        out: where to write (may alias base); otherwise a new tensor in out_dtype, default
            base's dtype.
        return_sq: also return Σ(stored result − base)², a 0-d fp32 tensor: the squared
            distance to θ₀ of what was written.

    Raises:
        UsageError: not one weight per tensor, shapes differ, a weight is bad, out disagrees.

    >>> a, b = torch.ones(2, dtype=torch.bfloat16), torch.full((2,), 3.0, dtype=torch.bfloat16)
    >>> add_deltas(a, [b, a], [0.25, 0.5]).tolist()
    [1.5, 1.5]
    """
    others = list(others)
    weights = list(weights)
    if len(others) != len(weights):
        raise UsageError(f"add_deltas needs one weight per tensor, got {len(others)} tensors "
                         f"and {len(weights)} weights")
    weights = [check_weight(w, "add_deltas") for w in weights]
    _check_shapes("add_deltas", [base, *others])
    out = _output("add_deltas", base, out, out_dtype)
    sq = _impl(base, *others, out).add_deltas(base, others, weights, out, return_sq)
    return (out, sq) if return_sq else out


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ(b − a)² with b − a in fp32, accumulated in fp64 (see `_common`), as a 0-d fp32
    tensor."""
    _check_shapes("sq_dist", [a, b])
    return _impl(a, b).sq_dist(a, b)


__all__ = ["add_deltas", "backend_for", "lerp", "lerp_", "lerp_many_", "sq_dist", "weighted_sum"]
