"""θ₀'s bytes in reproducible mode: the same whatever kernel settings the process inherits.

Each θ₀ is built and trained by the real CLI in a child process (`python -m safebasin`), as a
user runs it: the pins must be in place before torch loads, which no in-process test can show.
The smoke model (2 layers, width 32) and 20 steps keep each run at a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safebasin.reproducible import MARKER, PINNED_ENV

SMOKE = ["--steps", "20", "--hidden-size", "32", "--layers", "2", "--heads", "2",
         "--intermediate-size", "64"]
# sha256 of model.safetensors: world seed 0, θ₀ seed 0, the smoke model above, reproducible
# mode (measured 2026-12-05 after the toy world v2 landed; any change to the world, the model, the
# training recipe or the pinned versions changes it, on purpose)
THETA0_SMOKE_SHA256 = "56e623dc4f5580e6455e79dea441a1163580ac2c51cd3aa20cd0bc0d346ec4af"


def _safebasin(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """Starts the CLI in a child process; `_finish` waits for it and checks its exit code."""
    return subprocess.Popen([sys.executable, "-m", "safebasin", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(child: subprocess.Popen) -> None:
    out, err = child.communicate()
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, child.args, out, err)


def _inherited(**settings: str) -> dict[str, str]:
    """This environment without any pins, plus `settings`: what a user's shell might hold."""
    env = {k: v for k, v in os.environ.items() if k not in (*PINNED_ENV, MARKER)}
    return {**env, **settings}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repro") / "world"
    _finish(_safebasin("toy", "build", str(out), "--seed", "0", env=_inherited()))
    return out


@pytest.fixture(scope="module")
def trained(world) -> dict[str, Path]:
    """θ₀ trained three ways: pinned under two inherited settings, and unpinned (the control)."""
    runs = {
        "pinned_avx2": (_inherited(ATEN_CPU_CAPABILITY="avx2"), []),
        "pinned_default_mkl_avx2": (_inherited(ATEN_CPU_CAPABILITY="default", MKL_CBWR="AVX2",
                                               OMP_NUM_THREADS="2"), []),
        "unpinned_avx2": (_inherited(ATEN_CPU_CAPABILITY="avx2"), ["--no-reproducible"]),
    }
    outs = {name: world.parent / name for name in runs}
    # the three children run at once: each is mostly torch's import, one core each
    children = [_safebasin("toy", "train", str(world), "-o", str(outs[name]), "--seed", "0",
                           *SMOKE, "--quiet", *flags, env=env)
                for name, (env, flags) in runs.items()]
    for child in children:
        _finish(child)
    return outs


def test_theta0_bytes_ignore_inherited_kernel_settings(trained):
    assert (_sha256(trained["pinned_avx2"] / "model.safetensors")
            == _sha256(trained["pinned_default_mkl_avx2"] / "model.safetensors"))


def test_inherited_avx2_kernels_change_the_bytes_without_the_pins(trained):
    # the control: on this CPU the setting the pins override does change θ₀, so the test
    # above compares runs that would otherwise differ
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        if "avx2" not in f.read().split():
            pytest.skip("no AVX2 on this CPU: ATEN_CPU_CAPABILITY=avx2 falls back to default")
    assert (_sha256(trained["unpinned_avx2"] / "model.safetensors")
            != _sha256(trained["pinned_avx2"] / "model.safetensors"))


def test_pinned_theta0_records_the_pinned_kernels(trained):
    record = json.loads((trained["pinned_avx2"] / "safebasin_finetune.json").read_text())
    kernels = record["provenance"]["kernels"]
    assert record["provenance"]["reproducible"] is True
    assert (kernels["aten_cpu_capability"], kernels["mkl_cbwr_branch"], kernels["threads"],
            kernels["deterministic"]) == ("DEFAULT", "COMPATIBLE", 1, True)


def test_unpinned_theta0_records_that_it_was_not_reproducible(trained):
    record = json.loads((trained["unpinned_avx2"] / "safebasin_finetune.json").read_text())
    assert record["provenance"]["reproducible"] is False
    assert record["provenance"]["kernels"]["env"]["ATEN_CPU_CAPABILITY"] == "avx2"


def test_smoke_theta0_digest_is_pinned(trained):
    assert _sha256(trained["pinned_avx2"] / "model.safetensors") == THETA0_SMOKE_SHA256
