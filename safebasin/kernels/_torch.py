"""Torch implementation of the weight-combining kernels (CPU, and CUDA without Triton).

Numerics contract shared with the Triton kernels: inputs of any float dtype are upcast to fp32,
all arithmetic is fp32, and the result is rounded once, to nearest-even, into the output dtype
(`Tensor.to` rounds to nearest-even). We never call `torch.lerp` on bf16 tensors: whether it
computes in fp32 depends on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Weight = float | torch.Tensor


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _sq(d: torch.Tensor) -> torch.Tensor:
    # 0-d fp32 tensor; no host sync on CUDA.
    d = d.reshape(-1)
    return torch.dot(d, d) if d.numel() else d.new_zeros((), dtype=torch.float32)


def lerp(
    a: torch.Tensor,
    b: torch.Tensor,
    w: Weight,
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_sq: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    a32, b32 = _fp32(a), _fp32(b)
    # torch.lerp on fp32 switches formula at w = 0.5, so both endpoints are exact.
    res = torch.lerp(a32, b32, w if isinstance(w, torch.Tensor) else float(w))
    dtype = out.dtype if out is not None else (out_dtype or a.dtype)
    if out is None:
        out = res if dtype == torch.float32 else res.to(dtype)
    else:
        out.copy_(res)
    if return_sq:
        return out, _sq(b32 - a32)
    return out


def lerp_(
    a: torch.Tensor, b: torch.Tensor, w: Weight, *, return_sq: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        sq = _sq(b - a) if return_sq else None
        a.lerp_(b, w if isinstance(w, torch.Tensor) else float(w))
        return (a, sq) if return_sq else a
    a32, b32 = _fp32(a), _fp32(b)
    res = torch.lerp(a32, b32, w if isinstance(w, torch.Tensor) else float(w))
    sq = _sq(b32 - a32) if return_sq else None
    a.copy_(res)
    return (a, sq) if return_sq else a


def weighted_sum(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[Weight],
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_sq: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    acc = torch.mul(_fp32(tensors[0]), weights[0])
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        acc.add_(_fp32(t), alpha=w) if not isinstance(w, torch.Tensor) else acc.addcmul_(
            _fp32(t), w.to(torch.float32)
        )
    dtype = out.dtype if out is not None else (out_dtype or tensors[0].dtype)
    if out is None:
        out = acc if dtype == torch.float32 else acc.to(dtype)
    else:
        out.copy_(acc)
    if return_sq:
        # distance of the *stored* result to the first input, so recipes report what was written
        stored = acc if dtype == torch.float32 else _fp32(out)
        return out, _sq(stored - _fp32(tensors[0]))
    return out


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _sq(_fp32(b) - _fp32(a))
