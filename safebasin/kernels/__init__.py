"""The one place where weights are combined: lerp, in-place lerp, weighted sum, squared distance.

Every function computes in fp32 and rounds once, to nearest-even, into the output dtype.
`SAFEBASIN_KERNEL=torch|triton` forces an implementation; by default Triton serves CUDA tensors
when it imports, and torch serves everything else.

    >>> import torch
    >>> from safebasin import kernels
    >>> a, b = torch.zeros(4, dtype=torch.bfloat16), torch.ones(4, dtype=torch.bfloat16)
    >>> kernels.lerp(a, b, 0.25).tolist()
    [0.25, 0.25, 0.25, 0.25]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from . import _torch

Weight = float | torch.Tensor


def backend_for(*tensors: torch.Tensor) -> str:
    """Name of the implementation that will serve these tensors: "torch" or "triton"."""
    forced = os.environ.get("SAFEBASIN_KERNEL", "").strip().lower()
    if forced in ("torch", "triton"):
        return forced
    return "torch"


def _impl(*tensors: torch.Tensor):
    return _torch


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

    With `return_sq`, also returns Σ(b − a)² as a 0-d fp32 tensor (no host sync).
    """
    return _impl(a, b).lerp(a, b, w, out=out, out_dtype=out_dtype, return_sq=return_sq)


def lerp_(
    a: torch.Tensor, b: torch.Tensor, w: Weight, *, return_sq: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """In place: a ← a + w·(b − a) (the EMA update with a the shadow, b the weights, w = η)."""
    return _impl(a, b).lerp_(a, b, w, return_sq=return_sq)


def weighted_sum(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[Weight],
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_sq: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Σ wᵢ·tᵢ with an fp32 accumulator, rounded once into `out` (or `out_dtype`).

    With `return_sq`, also returns Σ(stored result − tensors[0])² as a 0-d fp32 tensor: the
    squared distance of what was written to the first input (θ₀ in every merge).
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"weighted_sum needs one weight per tensor, got {len(tensors)} and "
                         f"{len(weights)}")
    return _impl(*tensors).weighted_sum(
        tensors, weights, out=out, out_dtype=out_dtype, return_sq=return_sq
    )


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ(b − a)² computed in fp32, as a 0-d fp32 tensor."""
    return _impl(a, b).sq_dist(a, b)


__all__ = ["backend_for", "lerp", "lerp_", "weighted_sum", "sq_dist"]
