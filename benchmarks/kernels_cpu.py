"""Bandwidth of safebasin's torch lerp on CPU against torch.lerp and a plain copy, same run.

    python benchmarks/kernels_cpu.py [--mb 256] [--repeats 5] [--weight 0.3] [--threads N]

Inputs are two bf16 tensors of --mb megabytes each (256 MB: 128 Mi elements), the output is
bf16. GB/s counts the bytes a kernel must move: 3 tensors for lerp (read a and b, write out),
2 for the copy. safebasin's path computes in fp32 with a separate multiply and add and rounds
once (see safebasin/kernels/_common.py); torch.lerp on bf16 CPU tensors uses fp32 with an FMA,
so the two agree except near rounding ties. Each figure is the median of --repeats runs after
one warm-up run.
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["SAFEBASIN_KERNEL"] = "torch"

    n = args.mb * 10**6 // 2
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16)
    out = torch.empty_like(a)
    w = args.weight
    cases = [
        ("copy (out.copy_(a))", 2, lambda: out.copy_(a)),
        ("torch.lerp(a, b, w, out=out)", 3, lambda: torch.lerp(a, b, w, out=out)),
        ("safebasin kernels.lerp", 3, lambda: kernels.lerp(a, b, w, out=out)),
        ("safebasin kernels.lerp + fused Σ(b−a)²", 3,
         lambda: kernels.lerp(a, b, w, out=out, return_sq=True)),
    ]
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}; python {platform.python_version()}, torch "
          f"{torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    print(f"lerp of two bf16 tensors of {a.nbytes / 1e6:.0f} MB into bf16, w = {w}, "
          f"median of {args.repeats}")
    copy_rate = None
    for name, tensors, fn in cases:
        t, times = _seconds(fn, args.repeats)
        rate = tensors * a.nbytes / t / 1e9
        copy_rate = copy_rate or rate
        runs = " ".join(f"{x * 1e3:.0f}" for x in times)
        print(f"  {name:42s} {t * 1e3:7.1f} ms  {rate:6.2f} GB/s  "
              f"({rate / copy_rate:4.0%} of copy)   runs ms: {runs}")
    diff = int((kernels.lerp(a, b, w) != torch.lerp(a, b, w)).sum())
    print(f"safebasin vs torch.lerp: {diff} of {n} elements differ (near-ties; fp32 FMA vs "
          "separate multiply and add)")


if __name__ == "__main__":
    main()
