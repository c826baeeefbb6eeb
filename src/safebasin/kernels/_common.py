"""What both implementations share, so that they produce the same bits for fp32 outputs.

The numerics contract, in one place (the torch and Triton code follow it step by step; the one
exception, a 16-bit lerp on CPU served by `torch.lerp`, is explained in `_torch`):

* every input element is upcast to fp32 exactly;
* a weight given as a Python float is rounded to fp32 first (a 0-d tensor weight too);
* lerp a + w·(b − a) is evaluated as x + c·(y − x), with (x, y, c) = (a, b, w) when w < 0.5
  and (b, a, 1 − w) otherwise, so that both endpoints are exact (w = 0 gives a, w = 1 gives b)
  and the base is always the nearer end; a zero c returns x itself (no 0·Inf = NaN, no -0.0
  lost);
* every fp32 operation is a separate, rounded IEEE operation: no fused multiply-add (the
  Triton kernels are compiled with `enable_fp_fusion=False`, the torch code uses no op that
  may fuse, such as `torch.lerp` or `add(..., alpha=)`, except in that one exception);
* a weighted sum starts from -0.0 (the identity of IEEE addition) and adds wᵢ·tᵢ in input
  order; a term whose weight is zero adds -0.0, i.e. nothing, whatever tᵢ holds;
* deltas x + Σ wᵢ·(yᵢ − x) drop the terms whose weight is zero; one term left is the lerp
  above (both endpoints exact); with more, each dᵢ = yᵢ − x is rounded to fp32, the products
  wᵢ·dᵢ are summed in order (from -0.0, as a weighted sum) and x is added last. Every yᵢ equal
  to x gives x back exactly (dᵢ = 0), which a weighted sum of the same inputs does not
  promise (up to the sign of a zero: -0.0 + +0.0 is +0.0). Weights given as tensors are not
  read on the host (that would wait for the GPU), so they are masked instead of dropped: with
  one tensor given it is the lerp, with more their zero terms add -0.0;
* the fp32 result is rounded once, to nearest-even, into the output dtype;
* sums of squares: the fp32 difference, squared and summed with fp64 accumulation, so the
  fp32 result hardly depends on summation order (block size, thread count, backend). The
  Triton kernels square in fp64 (exact); the torch path on CPU squares and sums each chunk in
  fp32 (relative error about 1e-7, at half the cost) before accumulating in fp64.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..errors import UsageError

Weight = float | torch.Tensor

# dtypes the Triton kernels load and store; anything else goes to torch
FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def fp32_value(w: float) -> float:
    """w rounded to the nearest fp32 value, returned as a Python float (exact)."""
    return float(torch.tensor(w, dtype=torch.float32))


def lerp_coefficient(w: float) -> tuple[bool, float]:
    """(swap, c) such that a + w·(b − a) = x + c·(y − x) with (x, y) = (b, a) if swap.

    c is exactly representable in fp32 and computed with fp32 arithmetic (1 − w rounded in
    fp32, as the kernels do on the device). w < 0.5 keeps a as the base: w = 0 returns a
    exactly; otherwise b is the base and w = 1 returns b exactly.
    """
    w32 = torch.tensor(w, dtype=torch.float32)
    if bool(w32 < 0.5):
        return False, float(w32)
    return True, float(torch.ones((), dtype=torch.float32) - w32)


def check_weight(w: object, what: str) -> Weight:
    """A finite real number (as a float) or a 1-element floating tensor, left on its device:
    checking a tensor's value would wait for the GPU."""
    if isinstance(w, torch.Tensor):
        if w.numel() != 1 or not w.is_floating_point():
            raise UsageError(f"{what}: a tensor weight must be a 0-d floating tensor, got "
                             f"shape {tuple(w.shape)} and dtype {w.dtype}")
        return w
    if isinstance(w, bool) or not isinstance(w, numbers.Real):
        raise UsageError(f"{what}: weight must be a float or a 0-d tensor, got "
                         f"{type(w).__name__}")
    if not math.isfinite(w):
        raise UsageError(f"{what}: weight must be finite, got {w}")
    return float(w)
