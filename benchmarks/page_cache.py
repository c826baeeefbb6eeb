"""What growing the page cache costs on this machine: reads and writes with and without dropping.

A merge of inputs larger than memory drops what it has read and written from the page cache
(docs/merge-engine.md). This measures why, on the machine it runs on, after emptying the cache
before every run (root only), alternating the two ways, median of `--runs`:
  * reading FILES (the inputs of a merge) in 64 MiB `preadv`s, keeping the cache, against
    dropping each range once read (`posix_fadvise(DONTNEED)`);
  * writing `--write-gb` GB with safebasin's `ShardWriter`, write-behind only, against
    `drop_behind=True`;
each with its kernel CPU time. On a 2-core Firecracker VM with 24 GiB, reading 30 GB took
28.2-38.0 s keeping the cache and 8.9-9.2 s dropping it.

    sudo python benchmarks/page_cache.py /tmp/sbbench/llama-3.1-8b/ckpt{0,1}/*.safetensors
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from safebasin._fs import drop_cached  # noqa: E402
from safebasin.checkpoint import ShardWriter, TensorSpec  # noqa: E402

_STEP = 64 << 20


def empty_cache() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise SystemExit(f"needs root to write /proc/sys/vm/drop_caches: {e.strerror}") from None


def timed(fn) -> tuple[float, float]:
    """Wall and kernel CPU seconds of fn(), after emptying the cache."""
    empty_cache()
    t, s = time.perf_counter(), os.times().system
    fn()
    return time.perf_counter() - t, os.times().system - s


def read_all(files: list[Path], drop: bool) -> None:
    buf = memoryview(bytearray(_STEP))
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            offset = 0
            while n := os.preadv(fd, [buf], offset):
                if drop:
                    drop_cached(fd, offset, n)
                offset += n
        finally:
            os.close(fd)


def write_all(folder: Path, nbytes: int, drop: bool) -> None:
    steps = max(1, nbytes // _STEP)
    out = folder / ("drop" if drop else "keep")
    out.mkdir()
    writer = ShardWriter(out, [TensorSpec("x", torch.uint8, (steps * _STEP,))],
                         shard_size=5 * 10**9, drop_behind=drop)
    block = memoryview(os.urandom(_STEP))
    for _ in range(steps):
        writer.write("x", block)
    writer.close()
    shutil.rmtree(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="files to read (a merge's inputs)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--write-gb", type=float, default=16.0)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: "
                    "next to the first file)")
    args = ap.parse_args()
    total = sum(f.stat().st_size for f in args.files)
    work = Path(tempfile.mkdtemp(dir=args.workdir or args.files[0].parent, prefix=".pc-"))
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        for _ in range(args.runs):
            for drop in (False, True):
                name = "dropping" if drop else "keeping the cache"
                results.setdefault(f"read {total / 1e9:.1f} GB, {name}", []).append(
                    timed(lambda d=drop: read_all(args.files, d)))
                results.setdefault(f"write {args.write_gb:.1f} GB, {name}", []).append(
                    timed(lambda d=drop: write_all(work, int(args.write_gb * 1e9), d)))
    finally:
        shutil.rmtree(work)
    for label, runs in results.items():
        walls = [w for w, _ in runs]
        print(f"{label:40s} {statistics.median(walls):6.2f} s  kernel "
              f"{statistics.median(k for _, k in runs):6.2f} s  runs "
              f"[{', '.join(f'{w:.2f}' for w in walls)}]")


if __name__ == "__main__":
    main()
