"""The one place where weights are combined: lerp, in-place lerp, weighted sum, squared distance.

Every function computes in fp32 and rounds once, to nearest-even, into the output dtype; the
exact sequence of fp32 operations is fixed (see `_common`), so the torch and Triton
implementations return the same bits. `SAFEBASIN_KERNEL=torch|triton` forces an
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


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ(b − a)² with b − a in fp32, accumulated in fp64, as a 0-d fp32 tensor."""
    _check_shapes("sq_dist", [a, b])
    return _impl(a, b).sq_dist(a, b)


__all__ = ["backend_for", "lerp", "lerp_", "weighted_sum", "sq_dist"]
