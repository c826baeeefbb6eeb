"""Triton kernels: lerp (in and out of place), K-input weighted sum, base + weighted deltas,
sum of squares.

Imported lazily by `safebasin.kernels` only when Triton serves a call. Each kernel reads
every input once and writes the output once; the optional sum of squares rides in the same
pass. Numerics follow `_common` operation by operation (the torch implementation computes the
same bits), with two Triton-specific points:

* launches pass `enable_fp_fusion=False`: otherwise the compiler turns x + c·d into one FMA
  on the GPU, and the result would differ in the last fp32 bit from torch and from the
  interpreter (numpy), which both round the product;
* bf16 goes in and out by bit manipulation, not `.to()`: the interpreter truncates on
  fp32 → bf16 casts and mangles subnormals in both directions; integer round-to-nearest-even
  gives the same bits on the GPU (where it costs a few integer ops in a memory-bound kernel)
  and under `TRITON_INTERPRET=1`, which is how the tests run these kernels on CPU tensors.

Sums of squares are deterministic: each program writes its fp64 partial sum to a buffer that
torch sums; no atomics. Inputs must be contiguous (the dispatcher sends others to torch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import Weight, fp32_value, lerp_coefficient

# Kernels below were decorated in interpreter mode iff this is True (triton decides at
# decoration time), so CPU tensors can be served only when it is.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes",
                                                                          "on")
MAX_INPUTS = 8  # input pointers per weighted-sum launch; more inputs chain through an fp32 buffer


@dataclass(frozen=True)
class LaunchConfig:
    """Elements per program and warps per program.

    4096 elements over 8 warps is 16 per thread: two 16-byte loads per 16-bit input, the usual
    shape of a streaming kernel on A100/H100. Not yet measured on a GPU (none was available);
    `benchmarks/kernels_gpu.py` sweeps the alternatives. The block size also fixes how the sum
    of squares is split, so it is a constant rather than autotuned: autotuning would make the
    split, and the last bits of the sum, depend on timing.
    """

    block: int = 4096
    num_warps: int = 8


DEFAULT = LaunchConfig()


@triton.jit
def _offsets(n, BLOCK: tl.constexpr):
    # int64: tensors may hold more than 2**31 elements
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def _load_f32(ptr, offs, mask):
    """Load and upcast exactly to fp32 (bf16 by shifting its bits into the high half)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        raw = tl.load(ptr.to(tl.pointer_type(tl.uint16)) + offs, mask=mask, other=0)
        return (raw.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rounded(ptr, offs, mask, r):
    """Store fp32 `r` rounded to nearest-even; return the stored value as fp32."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = r.to(tl.uint32, bitcast=True)
        # add 0x7FFF plus the lowest kept bit, then drop 16 bits: ties go to the even value,
        # and overflow carries into the exponent (to Inf), as IEEE asks
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        # a NaN whose payload sits in the low bits would carry into Inf: keep it a quiet NaN
        hi = tl.where(r != r, (bits >> 16) | 0x40, rounded)
        tl.store(ptr.to(tl.pointer_type(tl.uint16)) + offs, hi.to(tl.uint16), mask=mask)
        return (hi << 16).to(tl.float32, bitcast=True)
    elif ptr.dtype.element_ty == tl.float16:
        h = r.to(tl.float16)  # cvt.rn on GPU; numpy's cast (also nearest-even) in the interpreter
        tl.store(ptr + offs, h, mask=mask)
        return h.to(tl.float32)
    else:
        tl.store(ptr + offs, r, mask=mask)
        return r


# tl.sum is itself a @triton.jit library function, decorated when triton is imported: if that
# happened before TRITON_INTERPRET=1 was set, the interpreter cannot call it. tl.reduce is a
# builtin, and the interpreter recognises this combine function and sums with numpy.
_ADD = tl.standard._sum_combine


@triton.jit
def _sq_partial(d, mask):
    d64 = tl.where(mask, d, 0.0).to(tl.float64)
    return tl.reduce(d64 * d64, 0, _ADD)  # fp32² is exact in fp64


@triton.jit
def _lerp_kernel(x_ptr, y_ptr, out_ptr, sq_ptr, w_ptr, c, n,
                 W_FROM_PTR: tl.constexpr, STORE: tl.constexpr, RETURN_SQ: tl.constexpr,
                 SQ_OF_STORED: tl.constexpr, BASE_IS_Y: tl.constexpr, BLOCK: tl.constexpr):
    """out = x + c·(y − x); partial Σ(y − x)² per program, or with SQ_OF_STORED Σ(stored −
    base)², the base being y if BASE_IS_Y (the host swapped a and b) and x as given otherwise.
    With W_FROM_PTR, x, y are a, b and (swap, c) is derived from the device weight w here, as
    `lerp_coefficient` does on the host."""
    offs, mask = _offsets(n, BLOCK)
    x = _load_f32(x_ptr, offs, mask)
    y = _load_f32(y_ptr, offs, mask)
    if BASE_IS_Y:
        base = y
    else:
        base = x
    if W_FROM_PTR:
        w = tl.load(w_ptr).to(tl.float32)
        small = w < 0.5
        c = tl.where(small, w, 1.0 - w)
        x, y = tl.where(small, x, y), tl.where(small, y, x)
    d = y - x
    if STORE:
        # zero c returns x itself: exact endpoints, no 0·Inf = NaN, -0.0 kept
        stored = _store_rounded(out_ptr, offs, mask, tl.where(c == 0.0, x, x + c * d))
        if RETURN_SQ and SQ_OF_STORED:
            tl.store(sq_ptr + tl.program_id(0), _sq_partial(stored - base, mask))
    if RETURN_SQ and not SQ_OF_STORED:
        tl.store(sq_ptr + tl.program_id(0), _sq_partial(d, mask))


@triton.jit
def _add_term(acc, x_ptr, c, w_ptr, INDEX: tl.constexpr, offs, mask, W_FROM_PTR: tl.constexpr):
    if W_FROM_PTR:
        c = tl.load(w_ptr + INDEX)
    x = _load_f32(x_ptr, offs, mask)
    # a zero weight adds -0.0, which leaves acc unchanged bit for bit, even where x is Inf/NaN
    return acc + tl.where(c != 0.0, c * x, -0.0)


@triton.jit
def _weighted_sum_kernel(out_ptr, acc_ptr, ref_ptr, sq_ptr, w_ptr,
                         x0, x1, x2, x3, x4, x5, x6, x7,
                         c0, c1, c2, c3, c4, c5, c6, c7, n,
                         K: tl.constexpr, W_FROM_PTR: tl.constexpr, HAS_ACC: tl.constexpr,
                         FINAL: tl.constexpr, RETURN_SQ: tl.constexpr, BLOCK: tl.constexpr):
    """acc (fp32, or -0.0) + Σ_{i<K} cᵢ·xᵢ in order; FINAL rounds it into out and measures
    Σ(stored − ref)², otherwise it goes back to acc for the next launch of a chain."""
    offs, mask = _offsets(n, BLOCK)
    if HAS_ACC:
        acc = tl.load(acc_ptr + offs, mask=mask, other=0.0)
    else:
        acc = tl.full([BLOCK], -0.0, tl.float32)  # -0.0: the identity of IEEE addition
    if K > 0:
        acc = _add_term(acc, x0, c0, w_ptr, 0, offs, mask, W_FROM_PTR)
    if K > 1:
        acc = _add_term(acc, x1, c1, w_ptr, 1, offs, mask, W_FROM_PTR)
    if K > 2:
        acc = _add_term(acc, x2, c2, w_ptr, 2, offs, mask, W_FROM_PTR)
    if K > 3:
        acc = _add_term(acc, x3, c3, w_ptr, 3, offs, mask, W_FROM_PTR)
    if K > 4:
        acc = _add_term(acc, x4, c4, w_ptr, 4, offs, mask, W_FROM_PTR)
    if K > 5:
        acc = _add_term(acc, x5, c5, w_ptr, 5, offs, mask, W_FROM_PTR)
    if K > 6:
        acc = _add_term(acc, x6, c6, w_ptr, 6, offs, mask, W_FROM_PTR)
    if K > 7:
        acc = _add_term(acc, x7, c7, w_ptr, 7, offs, mask, W_FROM_PTR)
    if FINAL:
        if RETURN_SQ:
            ref = _load_f32(ref_ptr, offs, mask)  # before the store: out may alias ref
        stored = _store_rounded(out_ptr, offs, mask, acc)
        if RETURN_SQ:
            tl.store(sq_ptr + tl.program_id(0), _sq_partial(stored - ref, mask))
    else:
        tl.store(acc_ptr + offs, acc, mask=mask)


@triton.jit
def _add_delta(acc, base, x_ptr, c, w_ptr, INDEX: tl.constexpr, offs, mask,
               W_FROM_PTR: tl.constexpr, FIRST: tl.constexpr):
    if W_FROM_PTR:
        c = tl.load(w_ptr + INDEX)
    p = c * (_load_f32(x_ptr, offs, mask) - base)
    if W_FROM_PTR:  # a zero weight adds -0.0: nothing, even where x is Inf/NaN
        return acc + tl.where(c != 0.0, p, -0.0)
    elif FIRST:  # host weights are never zero here: -0.0 + p is p, so start from it
        return p
    else:
        return acc + p


@triton.jit
def _add_deltas_kernel(out_ptr, base_ptr, acc_ptr, sq_ptr, w_ptr,
                       x0, x1, x2, x3, x4, x5, x6, x7,
                       c0, c1, c2, c3, c4, c5, c6, c7, n,
                       K: tl.constexpr, W_FROM_PTR: tl.constexpr, HAS_ACC: tl.constexpr,
                       FINAL: tl.constexpr, RETURN_SQ: tl.constexpr, BLOCK: tl.constexpr):
    """acc (fp32, or -0.0) + Σ_{i<K} cᵢ·(xᵢ − base) in order; FINAL rounds base + acc into out
    and measures Σ(stored − base)², otherwise acc goes back to acc_ptr for the next launch."""
    offs, mask = _offsets(n, BLOCK)
    base = _load_f32(base_ptr, offs, mask)  # before the store: out may alias base
    if HAS_ACC:  # K >= 1 in every launch
        acc = tl.load(acc_ptr + offs, mask=mask, other=0.0)
        acc = _add_delta(acc, base, x0, c0, w_ptr, 0, offs, mask, W_FROM_PTR, False)
    else:
        acc = tl.full([BLOCK], -0.0, tl.float32)
        acc = _add_delta(acc, base, x0, c0, w_ptr, 0, offs, mask, W_FROM_PTR, True)
    if K > 1:
        acc = _add_delta(acc, base, x1, c1, w_ptr, 1, offs, mask, W_FROM_PTR, False)
    if K > 2:
        acc = _add_delta(acc, base, x2, c2, w_ptr, 2, offs, mask, W_FROM_PTR, False)
    if K > 3:
        acc = _add_delta(acc, base, x3, c3, w_ptr, 3, offs, mask, W_FROM_PTR, False)
    if K > 4:
        acc = _add_delta(acc, base, x4, c4, w_ptr, 4, offs, mask, W_FROM_PTR, False)
    if K > 5:
        acc = _add_delta(acc, base, x5, c5, w_ptr, 5, offs, mask, W_FROM_PTR, False)
    if K > 6:
        acc = _add_delta(acc, base, x6, c6, w_ptr, 6, offs, mask, W_FROM_PTR, False)
    if K > 7:
        acc = _add_delta(acc, base, x7, c7, w_ptr, 7, offs, mask, W_FROM_PTR, False)
    if FINAL:
        stored = _store_rounded(out_ptr, offs, mask, base + acc)
        if RETURN_SQ:
            tl.store(sq_ptr + tl.program_id(0), _sq_partial(stored - base, mask))
    else:
        tl.store(acc_ptr + offs, acc, mask=mask)


def _launch(kernel, n: int, config: LaunchConfig, device: torch.device, *args, **meta) -> None:
    grid = (triton.cdiv(n, config.block),)
    if device.type == "cuda":
        with torch.cuda.device(device):  # triton launches on the current device
            kernel[grid](*args, BLOCK=config.block, num_warps=config.num_warps,
                         enable_fp_fusion=False, **meta)
    else:  # interpreter
        kernel[grid](*args, BLOCK=config.block, enable_fp_fusion=False, **meta)


def _partials(n: int, device: torch.device, config: LaunchConfig) -> torch.Tensor:
    return torch.empty(triton.cdiv(n, config.block), dtype=torch.float64, device=device)


def _zero(device: torch.device) -> torch.Tensor:
    return torch.zeros((), dtype=torch.float32, device=device)


def _lerp(a: torch.Tensor, b: torch.Tensor, w: Weight, out: torch.Tensor | None,
          return_sq: bool, stored_sq: bool, config: LaunchConfig) -> torch.Tensor | None:
    n, device = a.numel(), a.device
    if n == 0:
        return _zero(device) if return_sq else None
    swap = False
    if isinstance(w, torch.Tensor) and w.device == device:  # read on the device: no host sync
        x, y, c, wbuf, from_ptr = a, b, 0.0, w.to(torch.float32).reshape(()), True
    else:
        swap, c = lerp_coefficient(float(w))
        x, y = (b, a) if swap else (a, b)
        wbuf, from_ptr = a, False  # wbuf unused
    sq = _partials(n, device, config) if return_sq else a  # a: unused placeholder
    _launch(_lerp_kernel, n, config, device, x, y, out if out is not None else a, sq, wbuf, c,
            n, W_FROM_PTR=from_ptr, STORE=out is not None, RETURN_SQ=return_sq,
            SQ_OF_STORED=stored_sq, BASE_IS_Y=swap)
    return sq.sum().to(torch.float32) if return_sq else None


def lerp(a: torch.Tensor, b: torch.Tensor, w: Weight, out: torch.Tensor | None,
         return_sq: bool, config: LaunchConfig = DEFAULT) -> torch.Tensor | None:
    """out ← a + w·(b − a) (out may be a: in place); optionally Σ(b − a)². out=None: sq only."""
    return _lerp(a, b, w, out, return_sq, False, config)


def sq_dist(a: torch.Tensor, b: torch.Tensor, config: LaunchConfig = DEFAULT) -> torch.Tensor:
    """Σ(b − a)² as a 0-d fp32 tensor (fp64 partial sums)."""
    return lerp(a, b, 0.0, None, True, config)  # type: ignore[return-value]


def _weights(weights: Sequence[Weight], tensors: Sequence[torch.Tensor],
             device: torch.device) -> tuple[list[torch.Tensor], list[float], torch.Tensor | None]:
    """(inputs, host coefficients, device weight buffer). Host weights: zero terms dropped.
    Any weight on the device: all become one fp32 device buffer, built without a host sync."""
    if any(isinstance(w, torch.Tensor) and w.device == device for w in weights):
        wbuf = torch.stack([
            w.to(device=device, dtype=torch.float32).reshape(()) if isinstance(w, torch.Tensor)
            else torch.full((), w, dtype=torch.float32, device=device) for w in weights])
        return list(tensors), [0.0] * len(tensors), wbuf
    terms = [(t, fp32_value(float(w))) for t, w in zip(tensors, weights, strict=True)]
    terms = [(t, c) for t, c in terms if c != 0.0]
    return [t for t, _ in terms], [c for _, c in terms], None


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[Weight],
                 out: torch.Tensor, return_sq: bool, config: LaunchConfig = DEFAULT
                 ) -> torch.Tensor | None:
    """out ← Σ wᵢ·tᵢ, chained over launches of MAX_INPUTS inputs through an fp32 buffer;
    optionally Σ(stored − tensors[0])²."""
    n, device = out.numel(), out.device
    if n == 0:
        return _zero(device) if return_sq else None
    inputs, coeffs, wbuf = _weights(weights, tensors, device)
    starts = list(range(0, len(inputs), MAX_INPUTS)) or [0]
    acc = torch.empty(n, dtype=torch.float32, device=device) if len(starts) > 1 else out
    sq = _partials(n, device, config) if return_sq else out  # out: unused placeholder
    for i, start in enumerate(starts):
        xs = inputs[start:start + MAX_INPUTS]
        cs = coeffs[start:start + MAX_INPUTS]
        k = len(xs)
        xs = xs + [out] * (MAX_INPUTS - k)  # unused slots: any valid pointer
        cs = cs + [0.0] * (MAX_INPUTS - k)
        final = i == len(starts) - 1
        _launch(_weighted_sum_kernel, n, config, device, out, acc, tensors[0], sq,
                wbuf[start:] if wbuf is not None else out, *xs, *cs, n, K=k,
                W_FROM_PTR=wbuf is not None, HAS_ACC=i > 0, FINAL=final,
                RETURN_SQ=return_sq and final)
    return sq.sum().to(torch.float32) if return_sq else None


def add_deltas(base: torch.Tensor, others: Sequence[torch.Tensor], weights: Sequence[Weight],
               out: torch.Tensor, return_sq: bool, config: LaunchConfig = DEFAULT
               ) -> torch.Tensor | None:
    """out ← base + Σ wᵢ·(othersᵢ − base), chained over launches of MAX_INPUTS inputs through
    an fp32 buffer; optionally Σ(stored − base)². One term (after dropping host zeros) is the
    lerp kernel, with its exact endpoints."""
    n, device = out.numel(), out.device
    if n == 0:
        return _zero(device) if return_sq else None
    if any(isinstance(w, torch.Tensor) for w in weights):  # masked, not dropped (_common)
        inputs, coeffs = list(others), [0.0] * len(others)
        wbuf = torch.stack([torch.as_tensor(w, dtype=torch.float32).to(device).reshape(())
                            for w in weights])
    else:
        inputs, coeffs, wbuf = _weights(weights, others, device)
    if len(inputs) <= 1:  # no term at all is w = 0
        other, w = ((others[0], weights[0]) if wbuf is not None else
                    (inputs[0], coeffs[0]) if inputs else (base, 0.0))
        return _lerp(base, other, w, out, return_sq, True, config)
    starts = list(range(0, len(inputs), MAX_INPUTS))
    acc = torch.empty(n, dtype=torch.float32, device=device) if len(starts) > 1 else out
    sq = _partials(n, device, config) if return_sq else out  # out: unused placeholder
    for i, start in enumerate(starts):
        xs = inputs[start:start + MAX_INPUTS]
        cs = coeffs[start:start + MAX_INPUTS]
        k = len(xs)
        xs = xs + [out] * (MAX_INPUTS - k)  # unused slots: any valid pointer
        cs = cs + [0.0] * (MAX_INPUTS - k)
        final = i == len(starts) - 1
        _launch(_add_deltas_kernel, n, config, device, out, base, acc, sq,
                wbuf[start:] if wbuf is not None else out, *xs, *cs, n, K=k,
                W_FROM_PTR=wbuf is not None, HAS_ACC=i > 0, FINAL=final,
                RETURN_SQ=return_sq and final)
    return sq.sum().to(torch.float32) if return_sq else None
