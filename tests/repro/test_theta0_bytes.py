"""θ₀'s bytes in reproducible mode: the same whatever kernel settings the process inherits.

Each θ₀ is trained by the real CLI in a child process (`python -m safebasin`), as a
user runs it: the pins must be in place before torch loads, which no in-process test can show.
The smoke model (2 layers, width 32) and 20 steps keep each run at a few seconds; the children
start with the session (`early_jobs.theta0_trainings`), and these tests run last.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

# sha256 of model.safetensors: world seed 0, θ₀ seed 0, the smoke model of
# `early_jobs.THETA0_SMOKE`, reproducible mode (measured 2026-12-05 after the toy world v2
# landed; any change to the world, the model, the training recipe or the pinned versions
# changes it, on purpose)
THETA0_SMOKE_SHA256 = "56e623dc4f5580e6455e79dea441a1163580ac2c51cd3aa20cd0bc0d346ec4af"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_theta0_bytes_ignore_inherited_kernel_settings(theta0_trainings):
    assert (_sha256(theta0_trainings["pinned_avx2"] / "model.safetensors")
            == _sha256(theta0_trainings["pinned_default_mkl_avx2"] / "model.safetensors"))


def test_inherited_avx2_kernels_change_the_bytes_without_the_pins(theta0_trainings):
    # the control: on this CPU the setting the pins override does change θ₀, so the test
    # above compares runs that would otherwise differ
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        if "avx2" not in f.read().split():
            pytest.skip("no AVX2 on this CPU: ATEN_CPU_CAPABILITY=avx2 falls back to default")
    assert (_sha256(theta0_trainings["unpinned_avx2"] / "model.safetensors")
            != _sha256(theta0_trainings["pinned_avx2"] / "model.safetensors"))


def test_pinned_theta0_records_the_pinned_kernels(theta0_trainings):
    record = json.loads(
        (theta0_trainings["pinned_avx2"] / "safebasin_finetune.json").read_text())
    kernels = record["provenance"]["kernels"]
    assert record["provenance"]["reproducible"] is True
    assert (kernels["aten_cpu_capability"], kernels["mkl_cbwr_branch"], kernels["threads"],
            kernels["deterministic"]) == ("DEFAULT", "COMPATIBLE", 1, True)


def test_unpinned_theta0_records_that_it_was_not_reproducible(theta0_trainings):
    record = json.loads(
        (theta0_trainings["unpinned_avx2"] / "safebasin_finetune.json").read_text())
    assert record["provenance"]["reproducible"] is False
    assert record["provenance"]["kernels"]["env"]["ATEN_CPU_CAPABILITY"] == "avx2"


def test_smoke_theta0_digest_is_pinned(theta0_trainings):
    assert _sha256(theta0_trainings["pinned_avx2"] / "model.safetensors") == THETA0_SMOKE_SHA256
