"""Torch implementation of the weight-combining kernels (CPU, and CUDA without Triton).

It follows the numerics contract in `_common` operation by operation, so its fp32 results are
the Triton kernels' results bit for bit. Two traps it avoids on purpose:

* `torch.lerp` is not used for fp32 outputs: on CPU its kernel computes fma(c, b − a, base)
  (measured: a quarter of the elements differ in the last bit from the separate multiply and
  add the Triton kernels compile to with `enable_fp_fusion=False`), and on bf16 tensors whether
  it computes in fp32 depends on the device. `add(x, alpha=w)` is avoided for the same reason.
* Work goes in chunks of fp32 scratch that stay in cache, so that the upcasts, the three fp32
  passes and the downcast cost cache bandwidth, not memory bandwidth.

One exception, on CPU only, where speed decides the merge: a lerp whose inputs and output
share one 16-bit dtype (the common bf16 merge) is one `torch.lerp` pass, which computes in
fp32 with an FMA and rounds once into the output. The FMA changes the fp32 intermediate by at
most one fp32 ulp, which changes the 16-bit result only where that intermediate lies within
an fp32 ulp of a 16-bit tie: such outputs may differ from the Triton kernel's by one 16-bit ulp
(both are correctly rounded fp32 math; tests/test_kernels.py holds them to the same float64
bound). Cross-backend bit identity is promised for fp32 outputs. The separate-op sequence costs
about ten passes over cache where `torch.lerp` costs one (benchmarks/kernels_cpu.py).

On CPU the sums of squares are fp32 squares summed pairwise in fp32 per chunk and accumulated
in fp64: relative error about 1e-7, where the exact fp64 squares the Triton kernels sum cost
twice as much here.

Functions take a preallocated, same-shape `out` (the public API allocates it) and return the
sum of squares as a 0-d fp32 tensor, or None when it was not asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ._common import Weight, fp32_value, lerp_coefficient


def chunk_elems(device: torch.device) -> int:
    """Elements per chunk of fp32 scratch.

    CPU: 512 Ki elements (2 MiB of fp32: a few buffers stay in L3), or 64 Ki per thread when
    torch runs more than 8 threads. Each op costs microseconds of dispatch, so much smaller
    chunks spend their time dispatching and much larger ones fall out of cache. Measured on a
    2-core EPYC (1 MiB L2, 32 MiB L3), a bf16 lerp with its sum of squares: 64 Ki 2.2,
    256 Ki 1.9, 512 Ki 1.0-1.9, 4 Mi 3.8 ns per element; the whole 1.2B-shaped merge, median
    of 5 alternating runs: 256 Ki 4.7 s, 512 Ki 3.9 s. Torch splits each elementwise op
    statically over its threads, so from one pass to the next every thread finds its slice of
    the scratch in its own cache. CUDA: the chunk only bounds scratch memory (256 MiB).
    """
    if device.type == "cpu":
        return max(1 << 19, (1 << 16) * torch.get_num_threads())
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
    """Σ d² over fp32 chunks d. CPU: fp32 squares summed pairwise per chunk, the chunks
    accumulated in a Python float (fp64; reading a CPU tensor costs no sync). Elsewhere: squared
    exactly in fp64 and accumulated in fp64 on the device, so nothing waits for the GPU."""

    def __init__(self, n: int, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self._cpu = device.type == "cpu"
        if enabled:
            self._host = 0.0
            if not self._cpu:
                self._acc = torch.zeros((), dtype=torch.float64, device=device)
            self._buf = _scratch(n, device, torch.float32 if self._cpu else torch.float64)

    def add(self, d: torch.Tensor) -> None:
        if not self.enabled:
            return
        if self._cpu:
            # a square past the fp32 range would make the fp32 result Inf anyway
            self._host += float(torch.sum(torch.mul(d, d, out=self._buf[: d.numel()])))
        else:
            self._acc.add_(self._buf[: d.numel()].copy_(d).square_().sum())  # fp32² exact

    def result(self) -> torch.Tensor | None:
        if not self.enabled:
            return None
        if self._cpu:
            return torch.tensor(self._host, dtype=torch.float32)
        return self._acc.to(torch.float32)  # 0-d fp32 on the device: no host sync


def _device_weight(w: Weight, device: torch.device) -> torch.Tensor | None:
    """The weight as a 0-d fp32 device tensor when reading it on the host would sync."""
    if isinstance(w, torch.Tensor) and device.type != "cpu" and w.device.type != "cpu":
        return w.to(device=device, dtype=torch.float32).reshape(())
    return None


def _fp32(t: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """t in fp32: t itself when it already is (a view: read it, never write it), else an exact
    upcast into scratch (ops on mixed dtypes take torch's slow casting loops)."""
    return t if t.dtype == torch.float32 else scratch.copy_(t)


def _store(r: torch.Tensor, dst: torch.Tensor, base: torch.Tensor, free: torch.Tensor,
           sq: _SumSq | None) -> None:
    """dst ← r, the one rounding into dst's dtype (nearest-even); with `sq`, add
    Σ(stored − base)² measured before writing (dst may alias the base's memory).
    `free` is fp32 scratch that neither r nor base occupies."""
    if sq is None or not sq.enabled:
        dst.copy_(r)
    elif dst.dtype == torch.float32:
        sq.add(torch.sub(r, base, out=free))
        dst.copy_(r)
    else:
        dst.copy_(r)
        sq.add(free.copy_(dst).sub_(base))


def _lerp_chunks(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None,
                 c: float | torch.Tensor, swap: torch.Tensor | None, sq: _SumSq,
                 stored_sq: bool, base_is_y: bool) -> None:
    """x + c·(y − x) chunk by chunk; `swap` (0-d bool) exchanges x and y on the device.

    `sq` adds Σ(y − x)², or with `stored_sq` Σ(stored − base)², where the base is y when
    `base_is_y` (the host swapped a and b) and otherwise the x given here (before any swap).
    """
    n, device = x.numel(), x.device
    tx, ty, tz = _scratch(n, device), _scratch(n, device), _scratch(n, device)
    for s in _chunks(n, device):
        m = s.stop - s.start
        cx, cy = _fp32(x[s], tx[:m]), _fp32(y[s], ty[:m])
        base, free = (cy, tx[:m]) if base_is_y else (cx, ty[:m])
        if swap is not None:  # new tensors: tx and ty are free again
            cx, cy = torch.where(swap, cy, cx), torch.where(swap, cx, cy)
        d = torch.sub(cy, cx, out=tz[:m])  # y − x, rounded to fp32
        if not stored_sq:
            sq.add(d)
        if out is None:
            continue
        if isinstance(c, torch.Tensor):
            # zero c: x itself (keeps -0.0, and Inf/NaN in y do not leak through 0·Inf)
            r = torch.where(c == 0, cx, d.mul_(c).add_(cx))
        elif c == 0.0:
            r = d.copy_(cx)
        else:
            r = d.mul_(c).add_(cx)  # separate rounded multiply and add (no FMA); + commutes
        _store(r, out[s], base, free, sq if stored_sq else None)


def _torch_lerp_serves(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None) -> bool:
    """CPU, inputs and output of one 16-bit dtype: the exception in the module docstring."""
    dtypes = {x.dtype, y.dtype} | ({out.dtype} if out is not None else set())
    return x.device.type == "cpu" and len(dtypes) == 1 and dtypes <= {torch.bfloat16,
                                                                      torch.float16}


def _fused_lerp_chunks(a: torch.Tensor, b: torch.Tensor, w: float, out: torch.Tensor | None,
                       sq: _SumSq, stored_sq: bool) -> None:
    """a + w·(b − a) by `torch.lerp` (fp32 math with an FMA, one rounding; module docstring).

    Chunked as the other paths are, so that the sum of squares finds its inputs in cache.
    """
    n, device = a.numel(), a.device
    swap, c = lerp_coefficient(w)
    w32 = fp32_value(w)
    ta, tb = (_scratch(n, device), _scratch(n, device)) if sq.enabled else (None, None)
    for s in _chunks(n, device):
        m = s.stop - s.start
        if sq.enabled:
            base = ta[:m].copy_(a[s])  # before out, which may alias a, is written
            if not stored_sq:
                sq.add(tb[:m].copy_(b[s]).sub_(base))  # Σ(b − a)²
        if out is None:
            continue
        if c == 0.0:  # an endpoint: a copy (no 0·Inf = NaN from the other end)
            out[s].copy_(b[s] if swap else a[s])
        else:
            torch.lerp(a[s], b[s], w32, out=out[s])
        if sq.enabled and stored_sq:
            sq.add(tb[:m].copy_(out[s]).sub_(base))


def _lerp(a: torch.Tensor, b: torch.Tensor, w: Weight, out: torch.Tensor | None,
          return_sq: bool, stored_sq: bool) -> torch.Tensor | None:
    x, y = _flat(a), _flat(b)
    sq = _SumSq(x.numel(), x.device, return_sq)
    dst = _Output(out) if out is not None else None
    wd = _device_weight(w, x.device)
    if wd is not None:
        small = wd < 0.5
        c = torch.where(small, wd, 1.0 - wd)  # fp32 arithmetic, as in the Triton kernel
        _lerp_chunks(x, y, dst.flat if dst else None, c, ~small, sq, stored_sq, False)
    elif _torch_lerp_serves(x, y, out):
        _fused_lerp_chunks(x, y, float(w), dst.flat if dst else None, sq, stored_sq)
    else:
        swap, c = lerp_coefficient(float(w))
        if swap:
            x, y = y, x
        _lerp_chunks(x, y, dst.flat if dst else None, c, None, sq, stored_sq, swap)
    if dst is not None:
        dst.finish()
    return sq.result()


def lerp(a: torch.Tensor, b: torch.Tensor, w: Weight, out: torch.Tensor | None,
         return_sq: bool) -> torch.Tensor | None:
    """out ← a + w·(b − a) (out may alias a or b); optionally Σ(b − a)². out=None: sq only."""
    return _lerp(a, b, w, out, return_sq, stored_sq=False)


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ(b − a)² as a 0-d fp32 tensor (see `_SumSq`)."""
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


def _delta(t: torch.Tensor, base: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """dst ← t − base in fp32 (t upcast exactly first)."""
    if t.dtype == torch.float32:
        return torch.sub(t, base, out=dst)
    return dst.copy_(t).sub_(base)


def add_deltas(base: torch.Tensor, others: Sequence[torch.Tensor], weights: Sequence[Weight],
               out: torch.Tensor, return_sq: bool) -> torch.Tensor | None:
    """out ← base + Σ wᵢ·(othersᵢ − base) (see `_common`); optionally Σ(stored − base)²."""
    device, n = out.device, out.numel()
    masked = any(isinstance(w, torch.Tensor) for w in weights)
    terms: list[tuple[torch.Tensor, float | torch.Tensor]]
    if masked:  # tensor weights are masked, not dropped (_common), wherever they live
        terms = [(_flat(t), torch.as_tensor(w, dtype=torch.float32).to(device).reshape(()))
                 for t, w in zip(others, weights, strict=True)]
    else:
        terms = list(_host_terms(others, weights))
    if len(terms) <= 1:  # the lerp: exact endpoints; no term at all is w = 0
        other, w = terms[0] if terms else (base, 0.0)
        return _lerp(base, other, w, out, return_sq, stored_sq=True)
    x = _flat(base)
    dst, sq = _Output(out), _SumSq(n, device, return_sq)
    tb, acc_buf, tmp = _scratch(n, device), _scratch(n, device), _scratch(n, device)
    for s in _chunks(n, device):
        m = s.stop - s.start
        bx, acc = _fp32(x[s], tb[:m]), acc_buf[:m]
        if masked:
            acc.fill_(-0.0)
        for i, (t, w) in enumerate(terms):
            if i == 0 and not masked:  # -0.0 + p is p bit for bit: start from the product
                _delta(t[s], bx, acc).mul_(w)
                continue
            p = _delta(t[s], bx, tmp[:m]).mul_(w)
            if masked:  # zero weight: add -0.0, i.e. nothing
                p = torch.where(w != 0, p, -0.0)
            acc.add_(p)
        _store(acc.add_(bx), dst.flat[s], bx, tmp[:m], sq)  # x + Σ: + commutes
    dst.finish()
    return sq.result()
