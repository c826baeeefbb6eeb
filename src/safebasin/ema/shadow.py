"""EMA shadow arithmetic on lists of tensors: pure tensor code, no models, files or names.

The recurrence (DESIGN.md): θ̄ₖ = (1−η)·θ̄ₖ₋₁ + η·θₖ, θ̄₀ = θ₀, with η the weight of the
incoming weights. Two ways to hold θ̄, both in fp32 whatever the model's dtype:

* "fp32": θ̄ itself. Update s ← s + η(θ − s). An update smaller than half an fp32 ulp of θ̄
  is lost (|θ̄| ≈ 1 has ulp 1.2e-7; η = 1e-4 times a weight change of 1e-3 is 1e-7), so with
  tiny η the shadow drifts from the recurrence. Memory: 4 bytes per averaged element.
* "delta": the offset d = θ̄ − θ₀, with θ₀ kept in the model's own dtype (exactly the weights
  training started from, so nothing is lost by not upcasting it). Update
  d ← d + η((θ − θ₀) − d), where θ − θ₀ is exact in fp32 for nearby weights (Sterbenz) and d
  carries fp32 precision relative to the offset itself, not to |θ|. Read out θ̄ = θ₀ + d,
  rounded once. Memory: 4 bytes + the model's element size (6 for bf16, 8 for fp32).

All arithmetic goes through `safebasin.kernels` (fp32, one rounding, same bits on every backend).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .. import kernels

KINDS = ("fp32", "delta")
# x tensors held at once: copies made for a CPU shadow of a GPU model stay bounded
_GROUP_BYTES = 64 << 20
_CHUNK = 1 << 20  # elements (4 MiB of fp32 scratch) per x − θ₀ step of the delta update


def lerp_many_(shadows: Sequence[torch.Tensor], xs: Iterable[torch.Tensor], eta: float) -> None:
    """s ← s + η(x − s) for each pair (fp32 shadows; x in any float dtype, same device).

    `xs` may be an iterator, so that each x (a host copy, a concatenation) exists only while
    it is used: pairs go to `kernels.lerp_many_` in groups of at most `_GROUP_BYTES` of x.
    """
    group_s: list[torch.Tensor] = []
    group_x: list[torch.Tensor] = []
    held = 0
    for s, x in zip(shadows, xs, strict=True):
        group_s.append(s)
        group_x.append(x)
        held += x.numel() * x.element_size()
        if held >= _GROUP_BYTES:
            kernels.lerp_many_(group_s, group_x, eta)
            group_s, group_x, held = [], [], 0
    if group_s:
        kernels.lerp_many_(group_s, group_x, eta)


def delta_update_(deltas: Sequence[torch.Tensor], xs: Iterable[torch.Tensor],
                  theta0s: Sequence[torch.Tensor], eta: float) -> None:
    """d ← d + η((x − θ₀) − d) for each triple of flat tensors, x − θ₀ formed exactly first.

    Not the algebraically equal Σ of (1−η)·d + η·x − η·θ₀: rounding η·x and η·θ₀ separately
    costs an error of η·|θ|·2⁻²⁴, exactly the loss the delta shadow exists to avoid. x − θ₀
    goes through one reused scratch buffer of `_CHUNK` elements: a temporary the size of the
    largest tensor (2 GiB of fp32 for a 128k × 4096 embedding) would raise peak memory.
    """
    scratch: torch.Tensor | None = None
    for d, x, t0 in zip(deltas, xs, theta0s, strict=True):
        if scratch is None or scratch.device != d.device:
            scratch = torch.empty(_CHUNK, dtype=torch.float32, device=d.device)
        for start in range(0, d.numel(), _CHUNK):
            part = slice(start, min(start + _CHUNK, d.numel()))
            offset = scratch[: part.stop - part.start]
            kernels.weighted_sum([x[part], t0[part]], [1.0, -1.0], out=offset)
            kernels.lerp_(d[part], offset, eta)


def readout(kind: str, shadow: torch.Tensor, theta0: torch.Tensor | None,
            dtype: torch.dtype) -> torch.Tensor:
    """θ̄ rounded once into `dtype`: the fp32 shadow, or θ₀ + d (may be `shadow` itself: do
    not modify the result)."""
    if kind == "delta":
        return kernels.weighted_sum([theta0, shadow], [1.0, 1.0], out_dtype=dtype)
    return shadow if dtype == shadow.dtype else shadow.to(dtype)
