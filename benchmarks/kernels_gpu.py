"""Bandwidth and correctness of safebasin's Triton kernels on one GPU, in one run (< 2 min).

    python benchmarks/kernels_gpu.py            # on a CUDA machine with triton
    python benchmarks/kernels_gpu.py --smoke    # tiny sizes on CPU under TRITON_INTERPRET=1

Inputs are bf16 tensors of --gib GiB each (default 1 GiB: 512 Mi elements), math in fp32. It
prints achieved bandwidth (bytes a kernel must move / median time of --repeats runs, CUDA
events, after a warm-up) for:

* a device-to-device copy (out.copy_(a)): the practical ceiling;
* lerp: torch.lerp(a, b, w, out=out) and torch._foreach_lerp_ (in place) against safebasin's
  Triton lerp (out of place, with the fused sum of squares, and in place);
* a K=4 weighted sum: safebasin's Triton kernel against its torch implementation;
* a sweep of block sizes and warps for the Triton lerp (the default is a heuristic until
  this has run on a GPU).

Correctness first: the Triton outputs must equal the torch implementation's bit for bit (same
fp32 operations, no FMA), lie within fp32 error of a float64 reference on a random sample of
elements, and the sums of squares must match float64 to 1e-6. Exit status 1 if any check
fails. Targets (printed, not enforced): Triton lerp >= 85% of copy bandwidth and never slower
than torch.lerp.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--smoke" in sys.argv:  # before triton is imported: it decides interpreter mode at import
    os.environ["TRITON_INTERPRET"] = "1"
os.environ["SAFEBASIN_KERNEL"] = "triton"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from safebasin import kernels  # noqa: E402
from safebasin.kernels import _torch  # noqa: E402

U = 2.0**-24  # fp32 unit roundoff
GiB = 1 << 30


# ---------------------------------------------------------------- measuring


class Timer:
    """Median seconds of `repeats` runs after one warm-up; CUDA events on a GPU."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.cuda = device.type == "cuda"
        self.repeats = repeats

    def __call__(self, fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return statistics.median(times)


def report(name: str, nbytes: int, seconds: float, copy_rate: float | None) -> float:
    rate = nbytes / seconds / 1e9
    share = f"{rate / copy_rate:6.1%} of copy" if copy_rate else ""
    print(f"  {name:48s} {seconds * 1e3:8.3f} ms {rate:8.1f} GB/s  {share}")
    return rate


# ---------------------------------------------------------------- float64 reference


def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 → dtype, one round-to-nearest-even (torch's own cast goes through fp32)."""
    bits, emin = {torch.bfloat16: (8, -126), torch.float16: (11, -14),
                  torch.float32: (24, -126)}[dtype]
    _, e = torch.frexp(x)
    ulp = torch.ldexp(torch.ones_like(x), torch.clamp(e - 1, min=emin) - (bits - 1))
    return (torch.round(x / ulp) * ulp).to(dtype)


def within_fp32_error(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> bool:
    """out is the rounding of a value within `bound` of ref (rounding is monotone)."""
    lo, hi = round_to(ref - bound, out.dtype), round_to(ref + bound, out.dtype)
    return bool(((out >= lo) & (out <= hi)).all())


def sq64(a: torch.Tensor, b: torch.Tensor | None = None, chunk: int = 1 << 26) -> float:
    """Σ(a − b)² (or Σa²) in float64, in chunks to bound memory."""
    total = 0.0
    for s in range(0, a.numel(), chunk):
        d = a[s:s + chunk].double() - (b[s:s + chunk].double() if b is not None else 0.0)
        total += float(d.square().sum())
    return total


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, name: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            self.failed.append(name)


def check_lerp(check: Checks, a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> None:
    want_sq = sq64(b, a)
    for w in (0.25, 0.3, 0.7, -0.5):
        out, sq = kernels.lerp(a, b, w, return_sq=True)
        want = torch.empty_like(out)
        _torch.lerp(a, b, w, want, False)
        check(f"lerp w={w}: Triton == torch implementation, bit for bit",
              torch.equal(out.view(torch.int16), want.view(torch.int16)))
        a64, b64, w32 = a[idx].double(), b[idx].double(), float(torch.tensor(w).float())
        ref = a64 + w32 * (b64 - a64)
        bound = 4 * U * (1 + max(abs(w32), abs(1 - w32))) * (a64.abs() + b64.abs())
        check(f"lerp w={w}: within fp32 error of float64 on {idx.numel()} samples",
              within_fp32_error(out[idx], ref, bound))
        exact = float((out[idx] == round_to(ref, out.dtype)).double().mean())
        print(f"       correctly rounded on {exact:.4%} of samples (rest: near-ties)")
        check(f"lerp w={w}: Σ(b−a)² within 1e-6 of float64",
              abs(float(sq) - want_sq) <= 1e-6 * want_sq)
    shadow = a[: a.numel() // 4].float()
    expect = kernels.lerp(shadow, b[: shadow.numel()], 0.01)
    kernels.lerp_(shadow, b[: shadow.numel()], torch.tensor(0.01, device=a.device))
    check("lerp_ (fp32 shadow, bf16 weights, device weight) == lerp",
          torch.equal(shadow.view(torch.int32), expect.view(torch.int32)))


def check_weighted_sum(check: Checks, ts: list[torch.Tensor], ws: list[float],
                       idx: torch.Tensor) -> None:
    out, sq = kernels.weighted_sum(ts, ws, return_sq=True)
    want = torch.empty_like(out)
    _torch.weighted_sum(ts, ws, want, False)
    check(f"weighted sum K={len(ts)}: Triton == torch implementation, bit for bit",
          torch.equal(out.view(torch.int16), want.view(torch.int16)))
    terms = torch.stack([float(torch.tensor(w).float()) * t[idx].double()
                         for t, w in zip(ts, ws, strict=True)])
    ref, bound = terms.sum(0), 2 * U * (len(ts) + 1) * terms.abs().sum(0)
    check(f"weighted sum K={len(ts)}: within fp32 error of float64",
          within_fp32_error(out[idx], ref, bound))
    want_sq = sq64(out, ts[0])
    check(f"weighted sum K={len(ts)}: Σ(out − t0)² within 1e-6 of float64",
          abs(float(sq) - want_sq) <= 1e-6 * want_sq)
    device_ws = [torch.tensor(w, device=ts[0].device) for w in ws]
    check(f"weighted sum K={len(ts)}: device weights give the same bits",
          torch.equal(kernels.weighted_sum(ts, device_ws).view(torch.int16),
                      out.view(torch.int16)))


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of each bf16 input")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny tensors on CPU under the Triton interpreter (logic only)")
    args = parser.parse_args()

    import triton

    from safebasin.kernels import _triton

    if args.smoke:
        device, n, repeats, samples = torch.device("cpu"), 3 * 4096 + 5, 1, 1000
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke to check the script on CPU")
            return 2
        device, repeats, samples = torch.device("cuda"), args.repeats, 1 << 22
        n = int(args.gib * GiB) // 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (interpreter)"
    print(f"device: {name}; torch {torch.__version__}, triton {triton.__version__}, "
          f"python {platform.python_version()}")
    print(f"inputs: bf16, {n} elements ({n * 2 / GiB:.3f} GiB) each; median of {repeats}")

    g = torch.Generator(device=device).manual_seed(0)
    ts = [torch.randn(n, generator=g, device=device).to(torch.bfloat16) for _ in range(4)]
    a, b = ts[0], ts[1]
    idx = torch.randint(0, n, (min(samples, n),), generator=g, device=device)
    nbytes = a.numel() * a.element_size()

    print("correctness")
    check = Checks()
    check_lerp(check, a, b, idx)
    check_weighted_sum(check, ts, [0.4, 0.3, -0.2, 0.5], idx)

    print("bandwidth (bytes moved / time)")
    timer = Timer(device, repeats)
    out = torch.empty_like(a)
    inplace = a.clone()
    copy = report("copy: out.copy_(a)", 2 * nbytes, timer(lambda: out.copy_(a)), None)
    t_torch = timer(lambda: torch.lerp(a, b, 0.3, out=out))
    report("torch.lerp(a, b, 0.3, out=out)", 3 * nbytes, t_torch, copy)
    report("torch._foreach_lerp_([a], [b], 0.3)", 3 * nbytes,
           timer(lambda: torch._foreach_lerp_([inplace], [b], 0.3)), copy)
    t_ours = timer(lambda: kernels.lerp(a, b, 0.3, out=out))
    ours = report("safebasin lerp (Triton)", 3 * nbytes, t_ours, copy)
    report("safebasin lerp + fused Σ(b−a)²", 3 * nbytes,
           timer(lambda: kernels.lerp(a, b, 0.3, out=out, return_sq=True)), copy)
    report("safebasin lerp_ (in place)", 3 * nbytes,
           timer(lambda: kernels.lerp_(inplace, b, 0.3)), copy)
    ws = [0.4, 0.3, -0.2, 0.5]
    report("safebasin weighted sum K=4 (Triton)", 5 * nbytes,
           timer(lambda: kernels.weighted_sum(ts, ws, out=out)), copy)
    report("safebasin weighted sum K=4, torch implementation", 5 * nbytes,
           timer(lambda: _torch.weighted_sum(ts, ws, out, False)), copy)
    print(f"targets: lerp at {ours / copy:.0%} of copy (>= 85%): "
          f"{'met' if ours >= 0.85 * copy else 'MISSED'}; "
          f"{t_torch / t_ours:.2f}x torch.lerp's speed (>= 1): "
          f"{'met' if t_ours <= t_torch else 'MISSED'}")

    print(f"block-size sweep, Triton lerp (default {_triton.DEFAULT})")
    for block in (1024, 2048, 4096, 8192):
        for warps in (4, 8):
            cfg = _triton.LaunchConfig(block, warps)
            try:
                report(f"block {block}, {warps} warps", 3 * nbytes,
                       timer(lambda cfg=cfg: _triton.lerp(a, b, 0.3, out, False, cfg)), copy)
            except Exception as e:  # keep the figures already printed
                print(f"  block {block}, {warps} warps: {type(e).__name__}: {e}")

    if check.failed:
        print(f"FAILED: {len(check.failed)} checks")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
