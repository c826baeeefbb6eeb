"""Torch implementation of the weight-combining kernels (CPU, and CUDA without Triton).

It follows the numerics contract in `_common` operation by operation, so its results are the
Triton kernels' results bit for bit. Two traps it avoids on purpose:

* `torch.lerp` is not used: on CPU its fp32 kernel computes fma(c, b − a, base) (measured: a
  quarter of the elements differ in the last bit from the separate multiply and add the Triton
  kernels compile to with `enable_fp_fusion=False`), and on bf16 tensors whether it computes in
  fp32 depends on the device. `add(x, alpha=w)` is avoided for the same reason.
* Work goes in chunks of fp32 scratch that stay in cache, so that the upcasts, the three fp32
  passes and the downcast cost cache bandwidth, not memory bandwidth. It is still about four
  times the work of one fused pass (benchmarks/kernels_cpu.py): the price of bits that do not
  depend on the CPU's vector instructions.

Functions take a preallocated, same-shape `out` (the public API allocates it) and return the
sum of squares as a 0-d fp32 tensor, or None when it was not asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ._common import Weight, fp32_value, lerp_coefficient


def chunk_elems(device: torch.device) -> int:
    """Elements per chunk of fp32 scratch.

    CPU: 64 Ki elements (256 KiB of fp32) per thread. Torch splits each elementwise op
    statically over its threads, so from one pass to the next every thread finds its slice of
    the scratch in its own L2 cache. CUDA: the chunk only bounds scratch memory (256 MiB).
    """
    if device.type == "cpu":
        return (1 << 16) * max(1, torch.get_num_threads())
    return 1 << 26


def _chunks(n: int, device: torch.device) -> Iterator[slice]:
    step = chunk_elems(device)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _scratch(n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(min(n, chunk_elems(device)), dtype=dtype, device=device)


def _flat(t: torch.Tensor) -> torch.Tensor:
    # a view when contiguous; a copy otherwise (inputs only: outputs go through _Output)
    return t.reshape(-1)


class _Output:
    """Flat writable view of `out`, or a contiguous stand-in copied back by `finish`."""

    def __init__(self, out: torch.Tensor) -> None:
        self._out = out
        self.flat = out.view(-1) if out.is_contiguous() else torch.empty(
            out.numel(), dtype=out.dtype, device=out.device)

    def finish(self) -> None:
        if not self._out.is_contiguous():
            self._out.copy_(self.flat.view(self._out.shape))


class _SumSq:
    """Σ d² with d fp32, squared exactly and accumulated in fp64 on the tensors' device."""

    def __init__(self, n: int, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            self._acc = torch.zeros((), dtype=torch.float64, device=device)
            self._buf = _scratch(n, device, torch.float64)

    def add(self, d: torch.Tensor) -> None:
        if self.enabled:
            # not torch.dot: MKL's threaded ddot stalls for milliseconds on small chunks
            self._acc.add_(self._buf[: d.numel()].copy_(d).square_().sum())

    def result(self) -> torch.Tensor | None:
        # 0-d fp32 on the device: no host sync
        return self._acc.to(torch.float32) if self.enabled else None


def _device_weight(w: Weight, device: torch.device) -> torch.Tensor | None:
    """The weight as a 0-d fp32 device tensor when reading it on the host would sync."""
    if isinstance(w, torch.Tensor) and device.type != "cpu" and w.device.type != "cpu":
        return w.to(device=device, dtype=torch.float32).reshape(())
    return None


def _lerp_chunks(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None,
                 c: float | torch.Tensor, swap: torch.Tensor | None, sq: _SumSq) -> None:
    """x + c·(y − x) chunk by chunk; `swap` (0-d bool) exchanges x and y on the device."""
    n, device = x.numel(), x.device
    tx, ty = _scratch(n, device), _scratch(n, device)
    for s in _chunks(n, device):
        m = s.stop - s.start
        # exact upcasts into scratch: ops on mixed dtypes take torch's slow casting loops
        cx = x[s] if x.dtype == torch.float32 else tx[:m].copy_(x[s])
        cy = ty[:m].copy_(y[s])
        if swap is not None:
            cx, cy = torch.where(swap, cy, cx), torch.where(swap, cx, cy)
        d = cy.sub_(cx)  # y − x, rounded to fp32
        sq.add(d)
        if out is None:
            continue
        if isinstance(c, torch.Tensor):
            # zero c: x itself (keeps -0.0, and Inf/NaN in y do not leak through 0·Inf)
            out[s].copy_(torch.where(c == 0, cx, d.mul_(c).add_(cx)))
        elif c == 0.0:
            out[s].copy_(cx)
        elif out.dtype == torch.float32:
            torch.add(cx, d.mul_(c), out=out[s])  # separate rounded multiply and add: no FMA
        else:
            out[s].copy_(d.mul_(c).add_(cx))  # the one rounding into out's dtype (RNE)


def lerp(a: torch.Tensor, b: torch.Tensor, w: Weight, out: torch.Tensor | None,
         return_sq: bool) -> torch.Tensor | None:
    """out ← a + w·(b − a) (out may alias a or b); optionally Σ(b − a)². out=None: sq only."""
    x, y = _flat(a), _flat(b)
    sq = _SumSq(x.numel(), x.device, return_sq)
    dst = _Output(out) if out is not None else None
    wd = _device_weight(w, x.device)
    if wd is not None:
        small = wd < 0.5
        c = torch.where(small, wd, 1.0 - wd)  # fp32 arithmetic, as in the Triton kernel
        _lerp_chunks(x, y, dst.flat if dst else None, c, ~small, sq)
    else:
        swap, c = lerp_coefficient(float(w))
        if swap:
            x, y = y, x
        _lerp_chunks(x, y, dst.flat if dst else None, c, None, sq)
    if dst is not None:
        dst.finish()
    return sq.result()


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ(b − a)² as a 0-d fp32 tensor (fp64 accumulation)."""
    return lerp(a, b, 0.0, None, True)  # type: ignore[return-value]


def _host_terms(tensors: Sequence[torch.Tensor], weights: Sequence[Weight]
                ) -> list[tuple[torch.Tensor, float]]:
    terms = [(_flat(t), fp32_value(float(w))) for t, w in zip(tensors, weights, strict=True)]
    return [(t, w) for t, w in terms if w != 0.0]  # a zero weight adds nothing (see _common)


def _accumulate(acc: torch.Tensor, tmp: torch.Tensor, s: slice,
                terms: Sequence[tuple[torch.Tensor, float | torch.Tensor]]) -> torch.Tensor:
    """acc ← -0.0 + Σ wᵢ·tᵢ[s] in order, each product and sum rounded to fp32."""
    if not terms or isinstance(terms[0][1], torch.Tensor):
        acc.fill_(-0.0)
        start = 0
    else:  # -0.0 + p is p bit for bit: start from the first product
        t, w = terms[0]
        _product(t[s], w, acc)
        start = 1
    for t, w in terms[start:]:
        p = _product(t[s], w, tmp)
        if isinstance(w, torch.Tensor):  # zero weight: add -0.0, i.e. nothing
            p = torch.where(w != 0, p, -0.0)
        acc.add_(p)
    return acc


def _fp32(t: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else scratch.copy_(t)


def _product(t: torch.Tensor, w: float | torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.float32:
        return torch.mul(t, w, out=dst)
    return dst.copy_(t).mul_(w)  # exact upcast first: a 16-bit product would round in 16 bits


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[Weight],
                 out: torch.Tensor, return_sq: bool) -> torch.Tensor | None:
    """out ← Σ wᵢ·tᵢ (fp32 accumulator, -0.0 start); optionally Σ(stored − tensors[0])²."""
    device, n = out.device, out.numel()
    terms: list[tuple[torch.Tensor, float | torch.Tensor]]
    if any(_device_weight(w, device) is not None for w in weights):
        # weights stay on the device; zero terms are masked there instead of skipped here
        terms = [(_flat(t), torch.as_tensor(w, dtype=torch.float32, device=device).reshape(()))
                 for t, w in zip(tensors, weights, strict=True)]
    else:
        terms = list(_host_terms(tensors, weights))
    ref = _flat(tensors[0])
    dst, sq = _Output(out), _SumSq(n, device, return_sq)
    acc, tmp = _scratch(n, device), _scratch(n, device)
    for s in _chunks(n, device):
        m = s.stop - s.start
        a = _accumulate(acc[:m], tmp[:m], s, terms)
        if not sq.enabled:
            dst.flat[s].copy_(a)  # the one rounding into out's dtype (nearest-even)
            continue
        # the distance of what is written, measured before writing: out may alias tensors[0]
        if out.dtype == torch.float32:
            stored = a
            d = torch.sub(a, _fp32(ref[s], tmp[:m]), out=tmp[:m])
        else:
            stored = a.to(out.dtype)  # the one rounding (nearest-even)
            d = tmp[:m].copy_(stored).sub_(_fp32(ref[s], acc[:m]))  # acc is free again
        sq.add(d)
        dst.flat[s].copy_(stored)
    dst.finish()
    return sq.result()
