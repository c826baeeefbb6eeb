"""`safebasin merge lerp --device cuda` on a generated Llama-3.2-1B-shaped pair, against the floor.

    python benchmarks/gpu_merge.py [--runs 3] [--workdir DIR]   # on a CUDA machine
    python benchmarks/gpu_merge.py --smoke                        # tiny shapes, --device cpu

Writes two random bf16 checkpoints with Llama-3.2-1B's tensor names and shapes (2.47 GB each,
3 shards; `merge_speed.py` makes them), then, interleaved over --runs rounds: the I/O floor
(read both inputs once with cat, write and fsync one output's bytes with dd) and the CLI merge
in a fresh process (`--alpha 0.5 --device cuda`). Prints the medians, the ratio to the floor,
GB/s over input bytes and peak RSS. A merge on a GPU can beat the CPU only where the CPU was
the bottleneck; the floor is the target either way.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu import TINY_SHAPE, pick_device  # noqa: E402
from merge_speed import SHAPES, fmt, io_floor, make_checkpoint, timed, warm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated checkpoints")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (seconds)")
    args = ap.parse_args()
    device, gpu = pick_device(args.smoke)
    shape = TINY_SHAPE if args.smoke else SHAPES["llama-3.2-1b"]
    name = "tiny" if args.smoke else "llama-3.2-1b"
    print(f"merge lerp --device {device}: {name}; GPU {gpu}; python "
          f"{platform.python_version()}, torch {torch.__version__}")
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    root = args.workdir or Path(tmp.name)
    base, ft, out = root / name / "base", root / name / "ft", root / name / "out"
    for i, folder in enumerate((base, ft)):
        if not folder.exists():
            make_checkpoint(folder, shape, seed=i)
    nbytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    warm([base, ft])
    cmd = [sys.executable, "-m", "safebasin", "merge", "lerp", str(base), str(ft), "-o",
           str(out), "--alpha", "0.5", "--device", device, "-q"]
    floors, merges = [], []
    for _ in range(args.runs):
        floors.append(io_floor([base, ft], nbytes, root / name / "dd.tmp"))
        shutil.rmtree(out, ignore_errors=True)
        merges.append(timed(cmd))
    floor, walls = statistics.median(floors), [w for w, _ in merges]
    wall = statistics.median(walls)
    print(f"  {nbytes / 1e9:.2f} GB per checkpoint, median of {args.runs}")
    print(f"  I/O floor (read 2, write+fsync 1)   {floor:6.2f} s   runs {fmt(floors)}")
    print(f"  merge lerp --device {device:4s}          {wall:6.2f} s   ratio "
          f"{wall / floor:.2f}x   {2 * nbytes / wall / 1e9:.2f} GB/s in   peak RSS "
          f"{max(r for _, r in merges):.0f} MiB   runs {fmt(walls)}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
