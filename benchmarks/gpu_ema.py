"""One online-EMA update of a Llama-3.2-1B-shaped model on the GPU, against torch._foreach_lerp_.

    python benchmarks/gpu_ema.py [--repeats 20]     # on a CUDA machine
    python benchmarks/gpu_ema.py --smoke            # tiny shapes on the CPU

Random tensors with Llama-3.2-1B's names and shapes (1.24 G elements, tied embeddings) live on
the device; `EMA(model, eta=0.25)` keeps its fp32 shadow beside them. Timed with CUDA events,
median of --repeats after a warm-up, alternating with the baselines in the same loop:

* fp32 model: `EMA.update` against `torch._foreach_lerp_(shadow, weights, 0.25)` on the very
  same tensors (the same arithmetic: the ratio is the target, <= 1.1x);
* bf16 model: `EMA.update` (reads bf16 weights into the fp32 shadow) against
  `_foreach_lerp_` on fp32 copies of the weights (it refuses mixed dtypes), which moves more
  bytes: shown for scale, GB/s counts each one's own bytes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu import TINY_SHAPE, pick_device  # noqa: E402
from merge_speed import SHAPES, specs_for  # noqa: E402

from safebasin.ema import EMA  # noqa: E402


def parameter_set(shape: dict, dtype: torch.dtype, device: str) -> nn.Module:
    """A module of random tensors under Llama's names (no forward: only the EMA reads it)."""
    root = nn.Module()
    g = torch.Generator(device=device).manual_seed(0)
    for name, dims in specs_for(shape):
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        t = torch.randn(dims, generator=g, device=device, dtype=torch.float32).mul_(0.02)
        mod.register_parameter(leaf, nn.Parameter(t.to(dtype)))
    return root


def _timer(device: str):
    def run(fn) -> float:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return run


def bench(shape: dict, dtype: torch.dtype, device: str, repeats: int) -> None:
    model = parameter_set(shape, dtype, device)
    ema = EMA(model, eta=0.25)
    shadow = ema.state_dict()["shadow"]
    params = dict(model.named_parameters())
    shadows = list(shadow.values())
    weights = [params[n].detach().float() for n in shadow]  # fp32 copies for the baseline
    timer = _timer(device)
    runs = {"EMA.update": ema.update,
            "_foreach_lerp_": lambda: torch._foreach_lerp_(shadows, weights, 0.25)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats + 1):  # round 0 warms up
        for key, fn in runs.items():
            t = timer(fn)
            if r:
                times[key].append(t)
    numel = sum(w.numel() for w in weights)
    moved = {"EMA.update": numel * (4 + dtype.itemsize + 4), "_foreach_lerp_": numel * 12}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  {str(dtype).removeprefix('torch.'):>8} model, {numel / 1e9:.2f} G elements: "
          + "   ".join(f"{k} {med[k] * 1e3:8.2f} ms ({moved[k] / med[k] / 1e9:6.1f} GB/s)"
                       for k in runs)
          + f"   ratio {med['EMA.update'] / med['_foreach_lerp_']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (seconds)")
    args = ap.parse_args()
    device, gpu = pick_device(args.smoke)
    print(f"one EMA update on {device} (GPU {gpu}); median of {args.repeats}; python "
          f"{platform.python_version()}, torch {torch.__version__}")
    shape = TINY_SHAPE if args.smoke else SHAPES["llama-3.2-1b"]
    for dtype in (torch.float32, torch.bfloat16):
        bench(shape, dtype, device, args.repeats)
        if device == "cuda":
            torch.cuda.empty_cache()  # the fp32 set's memory goes back before the bf16 one


if __name__ == "__main__":
    main()
