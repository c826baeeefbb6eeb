"""Bandwidth of safebasin's torch kernels on CPU against torch.lerp and a plain copy, same run.

    python benchmarks/kernels_cpu.py [--mb 256] [--repeats 5] [--weight 0.3] [--threads N]

Inputs are bf16 tensors of --mb megabytes each (256 MB: 128 Mi elements). GB/s counts the bytes
a kernel must move (inputs read once, output written once). Cases:
  * a copy and `torch.lerp` on bf16 tensors: the references;
  * `kernels.lerp` bf16 → bf16: on CPU this is one `torch.lerp` pass (fp32 math with an FMA,
    one rounding; see safebasin/kernels/_torch.py), plus its fused Σ(b − a)²;
  * `kernels.add_deltas` with one term and Σ(stored − base)²: what a lerp merge computes per
    chunk;
  * `kernels.lerp` bf16 → fp32: the separate-multiply-and-add sequence the Triton kernels
    share bit for bit (fp32 outputs), about ten passes over cache;
  * `kernels.add_deltas` with four terms and Σ(stored − base)²: offline EMA over K = 4.
--threads defaults to 1, as in the merge executor (safebasin/merge/executor.py says why).
Each figure is the median of --repeats runs after one warm-up run.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from safebasin import kernels  # noqa: E402


def _seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    fn()  # warm up: page faults, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="size of each input, MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weight", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["SAFEBASIN_KERNEL"] = "torch"

    n = args.mb * 10**6 // 2
    g = torch.Generator().manual_seed(0)
    a, b, *more = (torch.randn(n, generator=g).to(torch.bfloat16) for _ in range(5))
    out, out32 = torch.empty_like(a), torch.empty(n)
    w = args.weight
    ema = [0.1, 0.15, 0.2, 0.25]
    mb = a.nbytes  # bytes of one bf16 tensor
    cases = [
        ("copy (out.copy_(a))", 2 * mb, lambda: out.copy_(a)),
        ("torch.lerp(a, b, w, out=out)", 3 * mb, lambda: torch.lerp(a, b, w, out=out)),
        ("kernels.lerp bf16", 3 * mb, lambda: kernels.lerp(a, b, w, out=out)),
        ("kernels.lerp bf16 + Σ(b − a)²", 3 * mb,
         lambda: kernels.lerp(a, b, w, out=out, return_sq=True)),
        ("kernels.add_deltas 1 term + Σ(out − a)²", 3 * mb,
         lambda: kernels.add_deltas(a, [b], [w], out=out, return_sq=True)),
        ("kernels.lerp bf16 → fp32 (no FMA)", 4 * mb, lambda: kernels.lerp(a, b, w, out=out32)),
        ("kernels.add_deltas 4 terms + Σ(out − a)²", 6 * mb,
         lambda: kernels.add_deltas(a, [b, *more], ema, out=out, return_sq=True)),
    ]
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}; python {platform.python_version()}, torch "
          f"{torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    print(f"bf16 tensors of {mb / 1e6:.0f} MB, w = {w}, median of {args.repeats}")
    copy_rate = None
    for name, nbytes, fn in cases:
        t, times = _seconds(fn, args.repeats)
        rate = nbytes / t / 1e9
        copy_rate = copy_rate or rate
        runs = " ".join(f"{x * 1e3:.0f}" for x in times)
        print(f"  {name:42s} {t * 1e3:7.1f} ms  {rate:6.2f} GB/s  "
              f"({rate / copy_rate:4.0%} of copy)   runs ms: {runs}")
    separate = kernels.lerp(a, b, w, out_dtype=torch.float32).to(torch.bfloat16)
    diff = int((kernels.lerp(a, b, w) != separate).sum())
    print(f"bf16 lerp, torch.lerp (FMA) vs separate multiply and add rounded once: {diff} of "
          f"{n} elements differ (near bf16 ties)")


if __name__ == "__main__":
    main()
