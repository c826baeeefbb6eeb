"""Long fuzzing run of the checkpoint readers (issue 8): minutes instead of CI's seconds.

Runs the three properties of tests/test_fuzz.py (mutated safetensors files, index files and
recipes; same strategies, same checks) in rounds of fresh random seeds until the time budget is
spent, under an address-space limit so that an allocation the input does not justify (Python or
native) fails loudly instead of swapping. Prints how many examples ran, how many were read and
how many refused, and the first failure with hypothesis' shrunk example.

    python benchmarks/fuzz_long.py --minutes 5          # the figure quoted in the README
"""

from __future__ import annotations

import argparse
import collections
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hypothesis  # noqa: E402
import test_fuzz as fz  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

BATCH = 500  # examples per hypothesis run; each run gets a new seed
HEADROOM = 1 << 30  # address space allowed beyond what the process maps after imports


def _limit_address_space() -> int:
    """Cap virtual memory at what is mapped now plus HEADROOM; returns the cap in bytes."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = vm + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def _targets(work: Path):
    """(name, strategy, check) for each reader; checks return "ok" or "refused"."""
    index_folder, index_ref, index_seed = fz.make_index_folder(work / "index")
    recipe_folder, recipe = fz.make_recipe_folder(work / "recipe")
    file_path = work / "x.safetensors"
    return [
        ("safetensors header", fz.safetensors_files(),
         lambda raw: fz.check_safetensors_file(raw, file_path)),
        ("index file", fz.index_files(index_seed),
         lambda raw: fz.check_index(raw, index_folder, index_ref)),
        ("recipe", fz.recipe_files(recipe),
         lambda raw: fz.check_recipe(raw, recipe_folder, recipe)),
    ]


def _fuzz(strategy, check, seconds: float) -> collections.Counter:
    counts: collections.Counter = collections.Counter()

    @settings(max_examples=BATCH, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(raw=strategy)
    def prop(raw: bytes) -> None:
        counts[check(raw)] += 1

    end, round_ = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        hypothesis.seed(round_)(prop)()
        round_ += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total budget, split evenly")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python "
          f"{platform.python_version()}, torch {torch.__version__}, hypothesis "
          f"{hypothesis.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        targets = _targets(Path(tmp))
        cap = _limit_address_space()
        print(f"address space capped at {cap / 2**30:.2f} GiB; hang alarm "
              f"{fz.HANG_SECONDS} s per example; Python allocation checked per example")
        seconds = args.minutes * 60 / len(targets)
        total = 0
        for name, strategy, check in targets:
            start = time.monotonic()
            try:
                counts = _fuzz(strategy, check, seconds)
            except BaseException as e:  # hypothesis re-raises the shrunk failure
                print(f"{name}: FAILED: {type(e).__name__}: {e}")
                return 1
            n = sum(counts.values())
            total += n
            took = time.monotonic() - start
            print(f"{name:>18}: {n:>7} examples in {took:5.0f} s ({n / took:6.0f}/s): "
                  f"{counts['ok']} read, {counts['refused']} refused cleanly")
        print(f"{'total':>18}: {total:>7} examples, no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
